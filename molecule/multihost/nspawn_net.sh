#!/usr/bin/env bash
# The multi-host scenario's network: one private bridge of this machine, its egress proxy, and the hosts on it
# (a front, a training worker, a TFaaS replica), each booted by molecule/default/nspawn_host.sh create-bridged.
#
#   nspawn_net.sh up                       the bridge (BRIDGE, GATEWAY/24 on this machine) and the egress proxy
#   nspawn_net.sh create NAME ADDRESS      a Debian 12 host on the bridge (ADDRESS/24, sshd on ADDRESS:22)
#   nspawn_net.sh destroy NAME             power it off and remove it
#   nspawn_net.sh down                     the egress proxy and the bridge, once every host is destroyed
#   nspawn_net.sh setup-rootfs ROOTFS      (nspawn_host.sh's hook) the proxy, the name service, the peers
#
# No route, NAT or firewall rule of this machine changes: the bridge is a private network between this machine
# and the hosts. The hosts reach the package registries only through the egress proxy (egress_proxy.py), which
# listens on the bridge address; /etc/environment and apt's configuration point at it. pip reads this machine's
# local indexes, bound in by nspawn_host.sh as for every nspawn host.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
HOST_SH=$HERE/../default/nspawn_host.sh
STATE_ROOT=${MLAAS4HEP_NSPAWN_STATE:-/var/lib/mlaas4hep-nspawn}
CACHE_ROOT=${MLAAS4HEP_NSPAWN_CACHE:-/var/cache/mlaas4hep-nspawn}
BRIDGE=${MLAAS4HEP_MH_BRIDGE:-mlaas4hepmh0}
GATEWAY=${MLAAS4HEP_MH_GATEWAY:-10.231.7.1}
PROXY_PORT=${MLAAS4HEP_MH_PROXY_PORT:-23128}
SHARED_JOBS=$STATE_ROOT/mlh-shared-jobs
# Debian's packages, downloaded once for the three hosts and kept between runs (apt locks the folder while
# it writes, so the hosts take turns).
APT_ARCHIVES=$CACHE_ROOT/apt-archives-bookworm
PEERS=$'10.231.7.10 mlh-front\n10.231.7.11 mlh-worker\n10.231.7.21 mlh-tfaas'

log() { echo "nspawn_net: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (systemd-nspawn and the bridge need it)"

up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  mkdir -p "$STATE_ROOT" "$SHARED_JOBS" "$APT_ARCHIVES/partial"
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

setup_rootfs() {
  local rootfs=$1
  [[ -d $rootfs/etc ]] || die "no root filesystem at $rootfs"
  # The way out to the registries: the proxy on the bridge (services do not read /etc/environment).
  cat >"$rootfs/etc/environment" <<ENV
http_proxy=http://$GATEWAY:$PROXY_PORT
https_proxy=http://$GATEWAY:$PROXY_PORT
no_proxy=127.0.0.1,localhost,10.231.7.0/24
ENV
  printf 'Acquire::http::Proxy "http://%s:%s";\nAcquire::https::Proxy "http://%s:%s";\n' \
    "$GATEWAY" "$PROXY_PORT" "$GATEWAY" "$PROXY_PORT" >"$rootfs/etc/apt/apt.conf.d/80mlh-proxy"
  # No name server is reachable from the bridge: lookups must fail at once, not after timeouts (XRootD looks up
  # every peer). Names of the registries are resolved by the proxy; the hosts know each other from /etc/hosts.
  rm -f "$rootfs/etc/resolv.conf"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$rootfs/etc/resolv.conf"
  echo "$PEERS" >>"$rootfs/etc/hosts"
}

create() {
  local name=$1 address=$2
  [[ $name =~ ^mlh-[a-z0-9]{1,8}$ ]] || die "bad host name $name (mlh-*)"
  [[ $address =~ ^10\.231\.7\.[0-9]{1,3}$ ]] || die "bad address $address"
  local binds=("--bind=$APT_ARCHIVES:/var/cache/apt/archives")
  # The front and the worker share the job folder through this machine (systemd-nspawn machines cannot serve
  # NFS): the inventory says appliance_jobs_share_method: external.
  if [[ $name == mlh-front || $name == mlh-worker ]]; then
    binds+=("--bind=$SHARED_JOBS:/var/lib/mlaas4hep/jobs")
  fi
  MLAAS4HEP_NSPAWN_SETUP="$0 setup-rootfs" MLAAS4HEP_NSPAWN_BINDS="${binds[*]}" \
    "$HOST_SH" create-bridged "$name" "$address" "$BRIDGE" "$GATEWAY" bookworm
}

case ${1:-} in
  up) up ;;
  down) down ;;
  create) [[ $# -eq 3 ]] || die "usage: $0 create NAME ADDRESS"; create "$2" "$3" ;;
  setup-rootfs) [[ $# -eq 2 ]] || die "usage: $0 setup-rootfs ROOTFS"; setup_rootfs "$2" ;;
  destroy) [[ $# -eq 2 ]] || die "usage: $0 destroy NAME"; "$HOST_SH" destroy "$2" ;;
  status) [[ $# -eq 2 ]] || die "usage: $0 status NAME"; "$HOST_SH" status "$2" ;;
  *) die "usage: $0 up | down | create NAME ADDRESS | destroy NAME | status NAME" ;;
esac
