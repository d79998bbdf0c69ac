#!/usr/bin/env bash
# Installs what the appliance, its scripts and its tests need on Debian 12, as root: the Debian packages of
# scripts/debian-packages.txt, a virtual environment from the pinned requirements, and this checkout's packages.
#
# The virtual environment lives outside the clone (MLAAS4HEP_VENV, default /opt/mlaas4hep-dev/venv, apart from
# the deployed appliance's /opt/mlaas4hep/venv), readable by everyone, and this checkout is installed into it as
# a wheel, not editable: a training job runs as an unprivileged user with this interpreter and must import the
# appliance without reading the clone, which may sit in root's 0700 home. The venv is rebuilt only when a
# requirements file or the interpreter changes; the checkout is reinstalled at every run (a few seconds), so the
# venv always holds this working tree. Works from a git clone or from an unpacked tarball alike.
set -euo pipefail
umask 022  # the venv is read by the unprivileged job user, whatever root's umask is
cd "$(dirname "$0")/.."

mapfile -t APT_PACKAGES < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/debian-packages.txt | awk '{print $1}')
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# xrootd stops unless this machine's host name resolves, and a minimal image (debootstrap) has no /etc/hosts:
# add the line the Debian installer writes, only when the name resolves nowhere.
if ! getent hosts "$(uname -n)" >/dev/null; then
  echo "bootstrap: the host name $(uname -n) does not resolve; adding it to /etc/hosts as 127.0.1.1" >&2
  printf '127.0.1.1\t%s\n' "$(uname -n)" >>/etc/hosts
fi

# Debian's own interpreter, never whichever python3 comes first on PATH: the appliance runs on /usr/bin/python3
# (3.11.2 on Debian 12), so that is the one the suite must test.
PYTHON=/usr/bin/python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "bootstrap: $PYTHON is $("$PYTHON" --version); the appliance needs 3.11 or newer" >&2; exit 1; }
source scripts/venv.sh
stamp="$VENV/.requirements.sha256"
want=$( (cat requirements.txt requirements-dev.txt; "$PYTHON" --version) | sha256sum | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "bootstrap: building $VENV from requirements.txt and requirements-dev.txt" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements.txt -r requirements-dev.txt
  echo "$want" >"$stamp"
fi

# pip cannot tell whether the tree changed, so it reinstalls; a build/ folder left by an earlier build could
# carry modules that no longer exist, so none is kept.
rm -rf build
"$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall . >/dev/null
rm -rf build

# Developers' `.venv/bin/...` keeps working in a fresh clone. Jobs and servers are started with the real path.
[[ -e .venv || -L .venv ]] || ln -s "$VENV" .venv
