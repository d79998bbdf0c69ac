#!/usr/bin/env bash
# Installs what the appliance and its tests need on Debian 12 (root): system packages and the venv.
# Idempotent and quick on a second run: the venv is rebuilt only when a requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

# openssh-client (ssh-keygen), procps (pgrep) and git are missing from minimal images; the scripts call them.
APT_PACKAGES=(python3 python3-venv python3-dev build-essential xrootd-server xrootd-client
              debootstrap systemd-container iproute2 wrk curl ca-certificates openssl
              openssh-client procps git)
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

VENV=${MLAAS4HEP_VENV:-.venv}
PYTHON=/usr/bin/python3
stamp="$VENV/.requirements.sha256"
want=$( (cat requirements.txt requirements-dev.txt; "$PYTHON" --version) | sha256sum | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "bootstrap: building $VENV from requirements.txt and requirements-dev.txt" >&2
  # Debian's own interpreter, never whichever python3 comes first on PATH: the appliance runs on
  # /usr/bin/python3 (3.11.2 on Debian 12), so that is the one the suite must test.
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements.txt -r requirements-dev.txt
  "$VENV/bin/pip" install -q --no-deps -e . >/dev/null 2>&1
  echo "$want" > "$stamp"
fi
