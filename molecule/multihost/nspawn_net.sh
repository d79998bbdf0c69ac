#!/usr/bin/env bash
# Debian 12 hosts with systemd as PID 1 (systemd-nspawn), each in its own network namespace on one private
# bridge of this machine, for the multi-host scenario (a front, a training worker, a TFaaS replica).
#
#   nspawn_net.sh up                       the bridge (BRIDGE, ADDRESS/24 on this machine) and the egress proxy
#   nspawn_net.sh create NAME ADDRESS      boot NAME from the cached root filesystem (molecule/default's cache),
#                                          a veth on the bridge with ADDRESS/24, sshd on ADDRESS:22
#   nspawn_net.sh destroy NAME             power off, remove its state and its veth
#   nspawn_net.sh down                     the egress proxy and the bridge, once every host is destroyed
#   nspawn_net.sh status NAME              print the state folder and whether the host runs
#
# No route, NAT or firewall rule of this machine changes: the bridge is a private network between this machine
# and the hosts. The hosts reach the package registries only through the egress proxy (egress_proxy.py), which
# listens on the bridge address; /etc/environment and apt's configuration point at it.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE_ROOT=${MLAAS4HEP_NSPAWN_STATE:-/var/lib/mlaas4hep-nspawn}
CACHE_ROOT=${MLAAS4HEP_NSPAWN_CACHE:-/var/cache/mlaas4hep-nspawn}
BRIDGE=${MLAAS4HEP_MH_BRIDGE:-mlaas4hepmh0}
GATEWAY=${MLAAS4HEP_MH_GATEWAY:-10.231.7.1}
PROXY_PORT=${MLAAS4HEP_MH_PROXY_PORT:-23128}
SHARED_JOBS=$STATE_ROOT/mlh-shared-jobs

log() { echo "nspawn_net: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (systemd-nspawn and the bridge need it)"

rootfs_tarball() {
  # molecule/default's cache of a Debian 12 root filesystem (built there once when missing).
  "$HERE/../default/nspawn_host.sh" cache bookworm >&2
  local tarball
  tarball=$(ls -t "$CACHE_ROOT"/rootfs-bookworm-*.tar 2>/dev/null | head -1)
  [[ -n $tarball ]] || die "no cached bookworm root filesystem in $CACHE_ROOT"
  echo "$tarball"
}

container_pid() {
  local nspawn_pid
  nspawn_pid=$(cat "$1/nspawn.pid" 2>/dev/null) || return 1
  kill -0 "$nspawn_pid" 2>/dev/null || return 1
  pgrep -P "$nspawn_pid" | head -1
}

up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  mkdir -p "$STATE_ROOT" "$SHARED_JOBS"
  # Owned by the service user's fixed uid and gid (the inventory's mlaas4hep_uid/gid), as the NFS export
  # of roles/jobs_share_nfs would be: the API writes the job directories, the workers open them to jobs.
  chown "${MLAAS4HEP_MH_UID:-60990}:${MLAAS4HEP_MH_UID:-60990}" "$SHARED_JOBS"
  chmod 0711 "$SHARED_JOBS"
  local pidfile=$STATE_ROOT/mlh-egress-proxy.pid
  if ! { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
    setsid python3 "$HERE/egress_proxy.py" "$GATEWAY" "$PROXY_PORT" </dev/null \
      >"$STATE_ROOT/mlh-egress-proxy.log" 2>&1 &
    echo $! >"$pidfile"
  fi
  for _ in $(seq 30); do
    (exec 3<>"/dev/tcp/$GATEWAY/$PROXY_PORT") 2>/dev/null && { log "bridge $BRIDGE and proxy up"; return 0; }
    sleep 0.5
  done
  die "the egress proxy does not listen on $GATEWAY:$PROXY_PORT"
}

down() {
  local pidfile=$STATE_ROOT/mlh-egress-proxy.pid
  if [[ -f $pidfile ]]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
  fi
  rm -rf --one-file-system "$SHARED_JOBS"
  log "bridge $BRIDGE and proxy down"
}

create() {
  local name=$1 address=$2 state rootfs pid i
  [[ $name =~ ^mlh-[a-z0-9]{1,10}$ ]] || die "bad host name $name (mlh-*, at most 14 characters: its veth is vb-NAME)"
  [[ $address =~ ^10\.231\.7\.[0-9]{1,3}$ ]] || die "bad address $address"
  state=$STATE_ROOT/$name
  if pid=$(container_pid "$state") && [[ -n $pid ]]; then
    log "$name already runs (PID $pid)"
    return 0
  fi
  local tarball
  tarball=$(rootfs_tarball)
  rm -rf "$state"
  mkdir -p "$state" "$CACHE_ROOT/pip"
  rootfs=$state/rootfs
  mkdir "$rootfs"
  tar -C "$rootfs" -xf "$tarball"
  ssh-keygen -q -t ed25519 -N "" -C "molecule@$name" -f "$state/id_ed25519"
  ssh-keygen -A -f "$rootfs" >/dev/null
  install -d -m 0700 "$rootfs/root/.ssh"
  install -m 0600 "$state/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
  cat >"$rootfs/etc/ssh/sshd_config.d/nspawn-host.conf" <<CONF
# Its own network namespace: sshd on the host's private address.
ListenAddress $address
PermitRootLogin prohibit-password
PasswordAuthentication no
CONF
  ln -sf /dev/null "$rootfs/etc/systemd/system/ssh.socket"
  rm -f "$rootfs/etc/systemd/system/sockets.target.wants/ssh.socket"
  echo "$name" >"$rootfs/etc/hostname"
  printf '127.0.0.1 localhost\n%s %s\n' "$address" "$name" >"$rootfs/etc/hosts"
  # The way out to the registries: the proxy on the bridge (services do not read /etc/environment).
  cat >"$rootfs/etc/environment" <<ENV
http_proxy=http://$GATEWAY:$PROXY_PORT
https_proxy=http://$GATEWAY:$PROXY_PORT
no_proxy=127.0.0.1,localhost,10.231.7.0/24
ENV
  printf 'Acquire::http::Proxy "http://%s:%s";\nAcquire::https::Proxy "http://%s:%s";\n' \
    "$GATEWAY" "$PROXY_PORT" "$GATEWAY" "$PROXY_PORT" >"$rootfs/etc/apt/apt.conf.d/80mlh-proxy"
  # The network comes up inside, as on a VM: systemd-networkd gives host0 its address and route.
  mkdir -p "$rootfs/etc/systemd/network"
  printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nGateway=%s\n' "$address" "$GATEWAY" \
    >"$rootfs/etc/systemd/network/50-host0.network"
  ln -sf /lib/systemd/system/systemd-networkd.service \
    "$rootfs/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
  # No name server is reachable from the bridge: lookups must fail at once, not after timeouts (XRootD looks up
  # every peer). Names of the registries are resolved by the proxy; the hosts know each other from /etc/hosts.
  rm -f "$rootfs/etc/resolv.conf"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$rootfs/etc/resolv.conf"
  printf '10.231.7.10 mlh-front\n10.231.7.11 mlh-worker\n10.231.7.21 mlh-tfaas\n' >>"$rootfs/etc/hosts"
  echo "$address" >"$state/address"
  local crt
  for crt in /usr/local/share/ca-certificates/*.crt; do
    [[ -f $crt ]] && install -m 0644 "$crt" "$rootfs/usr/local/share/ca-certificates/"
  done
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || true

  local binds=(--bind="$CACHE_ROOT/pip:/root/.cache/pip")
  [[ -f /etc/pip.conf ]] && binds+=(--bind-ro=/etc/pip.conf)
  # The front and the worker share the job folder through this machine (systemd-nspawn machines cannot serve
  # NFS): the inventory says appliance_jobs_share_method: external.
  if [[ $name == mlh-front || $name == mlh-worker ]]; then
    binds+=(--bind="$SHARED_JOBS:/var/lib/mlaas4hep/jobs")
  fi
  log "booting $name ($address on $BRIDGE)"
  setsid systemd-nspawn --quiet --register=no --keep-unit --console=read-only --resolv-conf=off \
    --network-bridge="$BRIDGE" -M "$name" -D "$rootfs" "${binds[@]}" -b \
    </dev/null >"$state/console.log" 2>&1 &
  echo $! >"$state/nspawn.pid"

  for ((i = 0; i < 120; i++)); do
    if pid=$(container_pid "$state") && [[ -n $pid ]]; then
      case $(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true) in
        running | degraded) break ;;
      esac
    elif ! kill -0 "$(cat "$state/nspawn.pid")" 2>/dev/null; then
      tail -30 "$state/console.log" >&2; die "systemd-nspawn exited"
    fi
    sleep 1
  done
  ((i < 120)) || { tail -30 "$state/console.log" >&2; die "$name did not finish booting in 120 s"; }
  for ((i = 0; i < 60; i++)); do
    (exec 3<>"/dev/tcp/$address/22") 2>/dev/null && break
    sleep 1
  done
  ((i < 60)) || die "sshd of $name does not answer on $address:22"
  log "$name is running (PID $pid); ssh root@$address -i $state/id_ed25519"
}

destroy() {
  local name=$1 state pid nspawn_pid i
  state=$STATE_ROOT/$name
  [[ -d $state ]] || { log "$name does not exist"; return 0; }
  nspawn_pid=$(cat "$state/nspawn.pid" 2>/dev/null || true)
  if pid=$(container_pid "$state") && [[ -n $pid ]]; then
    kill -s RTMIN+4 "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
      kill -0 "$nspawn_pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      log "$name did not power off in 60 s; killing it"
      kill -KILL "$nspawn_pid" 2>/dev/null || true
      sleep 1
    fi
  fi
  ip link del "vb-$name" 2>/dev/null || true
  rm -rf --one-file-system "$state"
  log "$name destroyed"
}

status() {
  local state=$STATE_ROOT/$1 pid
  if pid=$(container_pid "$state") && [[ -n $pid ]]; then
    echo "running pid=$pid state=$state address=$(cat "$state/address")"
  else
    echo "stopped state=$state"
    return 3
  fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  create) [[ $# -eq 3 ]] || die "usage: $0 create NAME ADDRESS"; create "$2" "$3" ;;
  destroy) [[ $# -eq 2 ]] || die "usage: $0 destroy NAME"; destroy "$2" ;;
  status) [[ $# -eq 2 ]] || die "usage: $0 status NAME"; status "$2" ;;
  *) die "usage: $0 up | down | create NAME ADDRESS | destroy NAME | status NAME" ;;
esac
