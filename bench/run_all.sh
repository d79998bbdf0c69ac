#!/usr/bin/env bash
# Runs every benchmark on a quiet machine and assembles bench/RESULTS.md from the parts in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MLAAS4HEP_VENV:-.venv}/bin/python
for bench in streaming_bench training_bench tfaas_bench tfaas_protocols predict_bench soak faults bad_input; do
  [[ -f bench/$bench.py ]] && "$PY" bench/$bench.py
done
"$PY" bench/faults.py --api  # the MLaaS4HEP API's section of results/faults.md
{
  echo "# Benchmark results"
  echo
  echo "Each figure is a ratio against a baseline measured in the same run, on the machine named in its section."
  echo "Regenerate with \`bash bench/run_all.sh\` (provisioning times come from \`bench/provisioning_bench.py\`)."
  echo "A part measured while the machine was busy gives its load average: rerun it on a quiet machine before quoting it."
  for part in streaming training feature_cache predict tfaas tfaas_protocols soak faults bad_input provisioning; do
    [[ -f bench/results/$part.md ]] && { echo; sed "s/^#/##/" "bench/results/$part.md"; }
  done
} > bench/RESULTS.md
echo "wrote bench/RESULTS.md"
