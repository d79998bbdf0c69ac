#!/usr/bin/env bash
# The main job end to end on an embedded default, on this machine (Debian 12, root): installs what is needed,
# starts XRootD on loopback, streams and trains through it, then serves the model with TFaaS and predicts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/venv.sh
exec "$VENV/bin/python" scripts/demo.py "$@"
