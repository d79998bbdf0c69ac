#!/usr/bin/env bash
# Runs every benchmark on a quiet machine and assembles bench/RESULTS.md from the parts in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MLAAS4HEP_VENV:-.venv}/bin/python
for bench in streaming_bench training_bench tfaas_bench tfaas_protocols predict_bench soak faults bad_input scaling_bench; do
  [[ -f bench/$bench.py ]] && "$PY" bench/$bench.py
done
"$PY" bench/faults.py --api  # the MLaaS4HEP API's section of results/faults.md
bash bench/assemble.sh
