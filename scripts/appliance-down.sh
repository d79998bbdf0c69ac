#!/usr/bin/env bash
# Tears down what scripts/appliance-up.sh started: powers the local systemd host off and removes it.
# The cached root filesystem and pip cache (/var/cache/mlaas4hep-nspawn) stay for the next bring-up.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash molecule/default/nspawn_host.sh destroy "${MLAAS4HEP_HOST_NAME:-mlaas4hep-appliance}"
