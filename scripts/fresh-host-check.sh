#!/usr/bin/env bash
# The README's promise, checked as a new user meets it: a fresh minimal Debian machine (debootstrap minbase plus
# systemd, booted with systemd-nspawn, only the distribution's own Python), a clean clone of this repository's
# HEAD in /root (mode 0700) with shared/ beside it, and the README's two commands run there as root over ssh:
# `bash scripts/appliance-up.sh` (then appliance-down), then `bash scripts/test.sh`.
#
#   bash scripts/fresh-host-check.sh [SUITE]   SUITE: bookworm (the default) or trixie
#
# Environment: MLAAS4HEP_FRESH_SSH_PORT (22290), MLAAS4HEP_FRESH_KEEP=1 keeps the host afterwards.
# Needs root, debootstrap and systemd-nspawn; about an hour on 2 cores. The host shares this machine's network,
# and the commands inside boot their own nested systemd hosts on the ports of appliance-up.sh and the Molecule
# scenarios: nothing else may use those ports meanwhile. The whole output goes to
# /var/lib/mlaas4hep-nspawn/mlaas4hep-fresh-SUITE.log; the exit code is the commands' own.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
suite=${1:-bookworm}
name=mlaas4hep-fresh-$suite
port=${MLAAS4HEP_FRESH_SSH_PORT:-22290}
state=${MLAAS4HEP_NSPAWN_STATE:-/var/lib/mlaas4hep-nspawn}/$name
log=${MLAAS4HEP_NSPAWN_STATE:-/var/lib/mlaas4hep-nspawn}/$name.log

cleanup() {
  [[ ${MLAAS4HEP_FRESH_KEEP:-0} == 1 ]] || bash molecule/default/nspawn_host.sh destroy "$name" || true
}
trap cleanup EXIT

bash molecule/default/nspawn_host.sh destroy "$name"
bash molecule/default/nspawn_host.sh create "$name" "$port" "$suite"
# A clean clone of what is committed (what CI and a user get), never this working tree's edits; the host has no
# git yet (bootstrap.sh installs it), so the clone is made here.
git clone -q --no-local "$top" "$state/rootfs/root/mlaas4hep-appliance"
if [[ -d $top/../shared ]]; then
  mkdir -p "$state/rootfs/root/shared"
  cp -a "$top/../shared/." "$state/rootfs/root/shared/"
fi
chmod 0700 "$state/rootfs/root"

echo "fresh-host-check: running the README's commands on $name; output in $log" >&2
set +e
# The commands run in an ssh session, inside the host's own cgroup tree, where the nested systemd-nspawn hosts of
# appliance-up.sh and the Molecule scenarios can make their cgroups.
ssh -p "$port" -i "$state/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o LogLevel=ERROR -o ServerAliveInterval=60 root@127.0.0.1 \
  'set -e; cd /root/mlaas4hep-appliance && bash scripts/appliance-up.sh && bash scripts/appliance-down.sh \
   && bash scripts/test.sh' >"$log" 2>&1
rc=$?
set -e
tail -n 25 "$log"
echo "fresh-host-check: exit code $rc (full output: $log)" >&2
exit $rc
