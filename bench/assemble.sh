#!/usr/bin/env bash
# Assembles bench/RESULTS.md from the parts in bench/results/ (bench/run_all.sh runs it after the benchmarks;
# run it alone after rerunning one of them).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Benchmark results"
  echo
  echo "Each figure is a ratio against a baseline measured in the same run, on the machine named in its section."
  echo "Regenerate with \`bash bench/run_all.sh\` (provisioning times come from \`bench/provisioning_bench.py\`)."
  echo "A part measured while the machine was busy gives its load average: rerun it on a quiet machine before quoting it."
  for part in streaming training feature_cache predict tfaas tfaas_protocols soak faults bad_input scaling provisioning; do
    [[ -f bench/results/$part.md ]] && { echo; sed "s/^#/##/" "bench/results/$part.md"; }
  done
} > bench/RESULTS.md
echo "wrote bench/RESULTS.md"
