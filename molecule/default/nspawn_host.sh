#!/usr/bin/env bash
# A Debian host with systemd as PID 1, booted with systemd-nspawn, reachable with ssh on loopback.
#
#   nspawn_host.sh create NAME SSH_PORT [SUITE]   debootstrap SUITE (bookworm, trixie; cached), boot, wait for
#                                                 `systemctl is-system-running`
#   nspawn_host.sh create-bridged NAME ADDRESS BRIDGE GATEWAY [SUITE]
#                                                 the same, in its own network namespace: a veth on BRIDGE (an
#                                                 existing bridge of this machine), ADDRESS/24 via GATEWAY, sshd
#                                                 on ADDRESS:22. MLAAS4HEP_NSPAWN_SETUP (a command, given the root
#                                                 filesystem) runs before the boot; MLAAS4HEP_NSPAWN_BINDS adds
#                                                 systemd-nspawn --bind options (space-separated)
#   nspawn_host.sh cache [SUITE]                  only build the cached root filesystem of SUITE
#   nspawn_host.sh destroy NAME                   power off, remove the root filesystem and the state
#   nspawn_host.sh status NAME                    print the state folder and whether the host runs
#
# A plain host shares this machine's network (no veth/NAT: we must not touch this machine's firewall or routes),
# so every port it opens is a loopback port here; callers pick ports that do not clash. A bridged one
# (molecule/multihost) has its own namespace on a private bridge its caller made; no route or NAT here either. The site's pip
# configuration (/etc/pip.conf and the local indexes it names) is bound read-only into the host, and a pip
# cache survives between runs, so a second fresh converge downloads nothing.
set -euo pipefail

STATE_ROOT=${MLAAS4HEP_NSPAWN_STATE:-/var/lib/mlaas4hep-nspawn}
CACHE_ROOT=${MLAAS4HEP_NSPAWN_CACHE:-/var/cache/mlaas4hep-nspawn}
MIRROR=${MLAAS4HEP_NSPAWN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm  # create and cache take another suite as their last argument
SUPPORTED_SUITES=(bookworm trixie)
PACKAGES=systemd,systemd-sysv,dbus,python3,openssh-server,ca-certificates,sudo

log() { echo "nspawn_host: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and systemd-nspawn need it)"

rootfs_tarball() {
  # Keyed by the suite, mirror and package list: changing any of them builds a new root filesystem.
  local key
  key=$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)
  echo "$CACHE_ROOT/rootfs-$SUITE-$key.tar"
}

build_rootfs_tarball() {
  local tarball=$1 tmp
  mkdir -p "$CACHE_ROOT"
  tmp=$(mktemp -d "$CACHE_ROOT/build.XXXXXX")
  log "debootstrap $SUITE ($PACKAGES) into the cache, once (about 70 s)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; rm -rf "$tmp"; die "debootstrap failed"; }
  # Every host made from the cache gets its own ssh host keys and machine id.
  rm -f "$tmp"/rootfs/etc/ssh/ssh_host_* "$tmp/rootfs/etc/machine-id"
  rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
  tar -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  mv "$tmp/rootfs.tar" "$tarball"  # atomic: a killed build never leaves a half tarball behind
  rm -rf "$tmp"
}

SITE_PIP_CONFIGS=(/etc/pip.conf /etc/xdg/pip/pip.conf /root/.config/pip/pip.conf)

pip_binds() {
  # The site's pip configuration and the local files and indexes it names, read-only, at the same paths.
  local conf
  for conf in "${SITE_PIP_CONFIGS[@]}"; do
    [[ -f $conf ]] && echo "--bind-ro=$conf"
  done
  python3 - "${SITE_PIP_CONFIGS[@]}" <<'PY'
import configparser, os, sys
parser = configparser.ConfigParser()
parser.read([c for c in sys.argv[1:] if os.path.isfile(c)])
binds = set()
for section in parser.sections():
    for key in ("find-links", "index-url", "extra-index-url", "constraint", "requirement"):
        for value in parser.get(section, key, fallback="").split():
            path = value.removeprefix("file://")
            if not path.startswith("/") or not os.path.exists(path):
                continue
            # An index folder is bound from its top (simple/ links to ../../files/), a file as itself.
            binds.add("/" + "/".join(path.strip("/").split("/")[:2]) if os.path.isdir(path) else path)
for path in sorted(binds):
    print(f"--bind-ro={path}")
PY
}

site_ca_certificates() {
  # The site's own certificate authorities (a TLS-inspecting proxy's, an internal mirror's) are trusted
  # inside the host too, so pip and apt reach the same registries as this machine.
  local rootfs=$1 crt added=0
  for crt in /usr/local/share/ca-certificates/*.crt; do
    [[ -f $crt ]] || continue
    install -m 0644 "$crt" "$rootfs/usr/local/share/ca-certificates/"
    added=1
  done
  if ((added)); then
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in $rootfs"
  fi
}

container_pid() {
  # PID 1 of the container: the child of systemd-nspawn.
  local nspawn_pid
  nspawn_pid=$(cat "$1/nspawn.pid" 2>/dev/null) || return 1
  kill -0 "$nspawn_pid" 2>/dev/null || return 1
  pgrep -P "$nspawn_pid" | head -1
}

unpack_host() {
  # A new host's state folder and root filesystem from the cached tarball, with its own ssh keys.
  local name=$1 state=$2 tarball rootfs
  tarball=$(rootfs_tarball)
  [[ -f $tarball ]] || build_rootfs_tarball "$tarball"
  rm -rf "$state"
  mkdir -p "$state" "$CACHE_ROOT/pip"
  rootfs=$state/rootfs
  mkdir "$rootfs"
  tar -C "$rootfs" -xf "$tarball"
  ssh-keygen -q -t ed25519 -N "" -C "molecule@$name" -f "$state/id_ed25519"
  ssh-keygen -A -f "$rootfs" >/dev/null
  install -d -m 0700 "$rootfs/root/.ssh"
  install -m 0600 "$state/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
  # Debian enables ssh.socket, which would listen on port 22 of every address: sshd runs as ssh.service only.
  ln -sf /dev/null "$rootfs/etc/systemd/system/ssh.socket"
  rm -f "$rootfs/etc/systemd/system/sockets.target.wants/ssh.socket"
  echo "$name" >"$rootfs/etc/hostname"
  site_ca_certificates "$rootfs"
}

boot_host() {
  # Boot the unpacked host (extra systemd-nspawn options in "$@"), wait until systemd is up and sshd answers.
  local name=$1 state=$2 ssh_address=$3 ssh_port=$4 pid i
  shift 4
  local binds
  mapfile -t binds < <(pip_binds)
  # CAP_NET_ADMIN (nspawn keeps it only for hosts with a private network): the appliance's worker brings up the
  # loopback of each job's own network namespace (docs/server.md, "Job isolation"), which needs it. Nothing in
  # the host uses it on the shared network: the firewall is rendered and checked, never loaded, there.
  setsid systemd-nspawn --quiet --register=no --keep-unit --console=read-only --capability=CAP_NET_ADMIN \
    -M "$name" -D "$state/rootfs" --bind="$CACHE_ROOT/pip:/root/.cache/pip" "${binds[@]}" "$@" -b \
    </dev/null >"$state/console.log" 2>&1 &
  echo $! >"$state/nspawn.pid"

  for ((i = 0; i < 120; i++)); do
    if pid=$(container_pid "$state") && [[ -n $pid ]]; then
      case $(nsenter -t "$pid" -a systemctl is-system-running 2>/dev/null || true) in
        running) break ;;
        degraded)
          log "$name booted degraded:"; nsenter -t "$pid" -a systemctl --failed --no-legend >&2 || true; break ;;
      esac
    elif ! kill -0 "$(cat "$state/nspawn.pid")" 2>/dev/null; then
      tail -30 "$state/console.log" >&2; die "systemd-nspawn exited"
    fi
    sleep 1
  done
  ((i < 120)) || { tail -30 "$state/console.log" >&2; die "$name did not finish booting in 120 s"; }
  for ((i = 0; i < 60; i++)); do
    (exec 3<>"/dev/tcp/$ssh_address/$ssh_port") 2>/dev/null && break
    sleep 1
  done
  ((i < 60)) || die "sshd of $name does not answer on $ssh_address:$ssh_port"
  log "$name is running (PID $pid); ssh root@$ssh_address -p $ssh_port -i $state/id_ed25519"
}

already_running() {
  local pid
  if pid=$(container_pid "$STATE_ROOT/$1") && [[ -n $pid ]]; then
    log "$1 already runs (PID $pid)"
    return 0
  fi
  return 1
}

create() {
  local name=$1 ssh_port=$2 state rootfs
  [[ $name =~ ^[a-z][a-z0-9-]{1,40}$ ]] || die "bad host name $name"
  [[ $ssh_port =~ ^[0-9]+$ ]] || die "bad ssh port $ssh_port"
  state=$STATE_ROOT/$name
  already_running "$name" && return 0
  if (exec 3<>"/dev/tcp/127.0.0.1/$ssh_port") 2>/dev/null; then
    die "port $ssh_port is taken on 127.0.0.1; pick another ssh port"
  fi
  unpack_host "$name" "$state"
  rootfs=$state/rootfs
  cat >"$rootfs/etc/ssh/sshd_config.d/nspawn-host.conf" <<CONF
# The host shares the network of the machine that booted it: listen on loopback only.
Port $ssh_port
ListenAddress 127.0.0.1
PermitRootLogin prohibit-password
PasswordAuthentication no
CONF
  printf '127.0.0.1 localhost %s\n' "$name" >"$rootfs/etc/hosts"
  echo "$ssh_port" >"$state/ssh_port"
  log "booting $name (ssh on 127.0.0.1:$ssh_port)"
  boot_host "$name" "$state" 127.0.0.1 "$ssh_port"
}

create_bridged() {
  local name=$1 address=$2 bridge=$3 gateway=$4 state rootfs
  # The veth on this machine is vb-NAME, at most 15 characters.
  [[ $name =~ ^[a-z][a-z0-9-]{1,11}$ ]] || die "bad host name $name (at most 12 characters on a bridge)"
  [[ $address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ && $gateway =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] \
    || die "bad address $address or gateway $gateway"
  ip link show "$bridge" >/dev/null 2>&1 || die "no bridge $bridge on this machine"
  state=$STATE_ROOT/$name
  already_running "$name" && return 0
  unpack_host "$name" "$state"
  rootfs=$state/rootfs
  cat >"$rootfs/etc/ssh/sshd_config.d/nspawn-host.conf" <<CONF
# Its own network namespace: sshd on the host's private address.
ListenAddress $address
PermitRootLogin prohibit-password
PasswordAuthentication no
CONF
  printf '127.0.0.1 localhost\n%s %s\n' "$address" "$name" >"$rootfs/etc/hosts"
  # The network comes up inside, as on a VM: systemd-networkd gives host0 its address and route.
  mkdir -p "$rootfs/etc/systemd/network"
  printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nGateway=%s\n' "$address" "$gateway" \
    >"$rootfs/etc/systemd/network/50-host0.network"
  ln -sf /lib/systemd/system/systemd-networkd.service \
    "$rootfs/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
  echo "$address" >"$state/address"
  if [[ -n ${MLAAS4HEP_NSPAWN_SETUP:-} ]]; then
    ${MLAAS4HEP_NSPAWN_SETUP} "$rootfs" || die "$MLAAS4HEP_NSPAWN_SETUP failed on $rootfs"
  fi
  local extra=()
  read -r -a extra <<<"${MLAAS4HEP_NSPAWN_BINDS:-}"
  # The veth's name on this machine, for destroy.
  echo "vb-$name" >"$state/veth"
  log "booting $name ($address on $bridge)"
  boot_host "$name" "$state" "$address" 22 --resolv-conf=off --network-bridge="$bridge" "${extra[@]}"
}

destroy() {
  local name=$1 state pid nspawn_pid i
  state=$STATE_ROOT/$name
  [[ -d $state ]] || { log "$name does not exist"; return 0; }
  nspawn_pid=$(cat "$state/nspawn.pid" 2>/dev/null || true)
  if pid=$(container_pid "$state") && [[ -n $pid ]]; then
    # SIGRTMIN+4 asks systemd for a clean poweroff.
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
  if [[ -f $state/veth ]]; then
    ip link del "$(cat "$state/veth")" 2>/dev/null || true
  fi
  rm -rf --one-file-system "$state"
  log "$name destroyed"
}

status() {
  local state=$STATE_ROOT/$1 pid
  if pid=$(container_pid "$state") && [[ -n $pid ]]; then
    echo "running pid=$pid state=$state ssh=$(cat "$state/address" 2>/dev/null || echo 127.0.0.1):$(
      cat "$state/ssh_port" 2>/dev/null || echo 22)"
  else
    echo "stopped state=$state"
    return 3
  fi
}

use_suite() {
  local suite=$1 known
  for known in "${SUPPORTED_SUITES[@]}"; do
    [[ $suite == "$known" ]] && { SUITE=$suite; return 0; }
  done
  die "unsupported suite $suite (supported: ${SUPPORTED_SUITES[*]})"
}

cache() {
  local tarball
  tarball=$(rootfs_tarball)
  [[ -f $tarball ]] || build_rootfs_tarball "$tarball"
  log "cached $SUITE root filesystem: $tarball"
}

case ${1:-} in
  create)
    [[ $# -eq 3 || $# -eq 4 ]] || die "usage: $0 create NAME SSH_PORT [SUITE]"
    [[ $# -eq 4 ]] && use_suite "$4"
    create "$2" "$3" ;;
  create-bridged)
    [[ $# -eq 5 || $# -eq 6 ]] || die "usage: $0 create-bridged NAME ADDRESS BRIDGE GATEWAY [SUITE]"
    [[ $# -eq 6 ]] && use_suite "$6"
    create_bridged "$2" "$3" "$4" "$5" ;;
  cache)
    [[ $# -le 2 ]] || die "usage: $0 cache [SUITE]"
    [[ $# -eq 2 ]] && use_suite "$2"
    cache ;;
  destroy) [[ $# -eq 2 ]] || die "usage: $0 destroy NAME"; destroy "$2" ;;
  status) [[ $# -eq 2 ]] || die "usage: $0 status NAME"; status "$2" ;;
  *) die "usage: $0 create NAME SSH_PORT [SUITE] | create-bridged NAME ADDRESS BRIDGE GATEWAY [SUITE]" \
    "| cache [SUITE] | destroy NAME | status NAME" ;;
esac
