#!/usr/bin/env bash
# Runs the whole test suite (lint included). Exit code: pytest's, with "no tests ran" (5) as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV=${MLAAS4HEP_VENV:-.venv}
"$VENV/bin/ruff" check .
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit $rc
