#!/usr/bin/env bash
# Runs the whole test suite (lint and format check included). Exit code: pytest's, with "no tests ran" (5) as a
# failure. The interpreter is the venv's by its real path (scripts/venv.sh), outside the clone: the tests start
# job workers with it, and their unprivileged jobs could not run an interpreter inside a clone in /root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/venv.sh
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit $rc
