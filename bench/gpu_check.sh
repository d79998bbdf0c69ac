#!/usr/bin/env bash
# GPU check (issue 16): train one model on this host's GPU through `mlaas4hep train` (two epochs; the second
# reads the feature cache), serve it with TFaaS, and print the events/s of epochs 1 and 2 and whether TFaaS
# answers what the SavedModel computes. Run it on a converged GPU host (roles/mlaas4hep installs the GPU
# builds there), from the checkout: `bash bench/gpu_check.sh`. No test depends on it.
#
# Exit codes: 0 the model trained on a GPU and was served; 77 no NVIDIA GPU on this host (nothing to check);
# 1 anything else (a GPU the frameworks do not see, training or serving failed).
# GPU_CHECK_EVENTS (200000 per class) sizes the data. GPU_CHECK_DRY_RUN=1 runs the same steps on the CPU, to
# check the script itself on a host without a GPU; its figures are then CPU figures and it says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MLAAS4HEP_VENV:-.venv}/bin/python
EVENTS=${GPU_CHECK_EVENTS:-200000}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}

if [[ $DRY_RUN != 1 ]]; then
  if [[ ! -e /dev/nvidia0 ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU on this host (no /dev/nvidia0, no nvidia-smi): nothing to check"
    exit 77
  fi
  if ! "$PY" -c "import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)" \
      2>/dev/null; then
    echo "gpu_check: this host has an NVIDIA GPU but TensorFlow sees none: is the GPU build installed" \
      "(tensorflow[and-cuda], as roles/mlaas4hep installs on a GPU host) and the driver loaded?" >&2
    exit 1
  fi
fi

WORK=$(mktemp -d -t gpu-check-XXXXXX)
trap 'kill "${TFAAS_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export TF_CPP_MIN_LOG_LEVEL=2
[[ $DRY_RUN == 1 ]] && export CUDA_VISIBLE_DEVICES=""

"$PY" -m appliance generate "$WORK/signal.root" --events "$EVENTS" --shift 1.0 --seed 1
"$PY" -m appliance generate "$WORK/background.root" --events "$EVENTS" --shift 0.0 --seed 2
printf '%s\n' "$WORK/signal.root" "$WORK/background.root" >"$WORK/files.txt"
printf '1\n0\n' >"$WORK/labels.txt"
cat >"$WORK/params.json" <<'JSON'
{"epochs": 2, "batch_size": 1024, "chunk_size": 50000, "seed": 1, "training": {"feature_cache_mb": 8192}}
JSON
cat >"$WORK/model.json" <<'JSON'
{"layers": [{"type": "Dense", "units": 256, "activation": "relu"},
            {"type": "Dense", "units": 256, "activation": "relu"},
            {"type": "Dense", "units": 1, "activation": "sigmoid"}],
 "loss": "binary_crossentropy", "optimizer": {"name": "adam", "learning_rate": 0.001}}
JSON
"$PY" -m appliance train --files "$WORK/files.txt" --labels "$WORK/labels.txt" --model "$WORK/model.json" \
  --params "$WORK/params.json" --fout "$WORK/bundle" --publish "$WORK/models" --name local.gpucheck \
  --progress-file "$WORK/progress.jsonl" --quiet >/dev/null

PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PY" -m tfaas --model-dir "$WORK/models" --port "$PORT" >"$WORK/tfaas.log" 2>&1 &
TFAAS_PID=$!

"$PY" - "$WORK" "$PORT" "$DRY_RUN" <<'PY'
"""Read the training's progress, ask TFaaS, compare with the SavedModel, print the figures."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import requests
import tensorflow as tf

work, port, dry_run = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
events = [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]
start = next(e for e in events if e.get("stage") == "train" and e.get("epoch") == 0)
epochs = {e["epoch"]: e for e in events if e.get("stage") == "train" and e.get("epoch") and not e.get("partial")}
device = str(start["device"])
print(f"device: {device}{'  (DRY RUN on the CPU: not a GPU figure)' if dry_run else ''}")
for n in (1, 2):
    e = epochs[n]
    print(f"epoch {n}: {e['events_per_s']:.0f} events/s ({e['events_read']} read, "
          f"{e['events_from_cache']} from the feature cache, {e['seconds']} s)")
ratio = epochs[2]["events_per_s"] / epochs[1]["events_per_s"]
print(f"epoch 2 / epoch 1: {ratio:.2f}")

bundle = work / "models" / "local.gpucheck" / "1"
serving = tf.saved_model.load(str(bundle)).signatures["serving_default"]
dim = serving.structured_input_signature[1]["inputs"].shape[1]
rows = np.random.default_rng(3).random((64, dim), dtype=np.float32)
expected = serving(inputs=tf.constant(rows))["outputs"].numpy()
url = f"http://127.0.0.1:{port}/json"
for _ in range(600):
    try:
        answer = requests.post(url, json={"model": "local.gpucheck", "values": rows.tolist()}, timeout=30)
        if answer.status_code == 200:
            break
    except requests.ConnectionError:
        pass
    time.sleep(0.2)
else:
    sys.exit(f"gpu_check: TFaaS did not answer: {(work / 'tfaas.log').read_text()[-2000:]}")
got = np.asarray(answer.json(), dtype=np.float32).reshape(expected.shape)
difference = float(np.max(np.abs(got - expected)))
print(f"TFaaS /json on 64 rows: max |difference| from the SavedModel {difference:.2e}")
if difference > 1e-4:
    sys.exit("gpu_check: TFaaS answers differ from the SavedModel")
if not dry_run and "GPU" not in device.upper():
    sys.exit(f"gpu_check: the model trained on {device}, not on a GPU")
PY
