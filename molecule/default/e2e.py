"""End-to-end call inside the appliance host, through its HTTP APIs only.

Writes a small signal and background ROOT file into the XRootD origin, submits a training workflow whose
files are root:// URLs through the appliance's XRootD proxy (``POST /jobs``), waits for the job to succeed
(``GET /jobs/<id>``), then asks TFaaS for a prediction from raw branch values (``POST /json``).
Runs with the appliance's own virtual environment. Exit code 1 names the call that failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import requests
import uproot

from appliance.data.synthetic import SyntheticSchema, write_root_file

MODEL = {
    "layers": [
        {"type": "Dense", "units": 16, "activation": "relu"},
        {"type": "Dense", "units": 1, "activation": "sigmoid"},
    ],
    "loss": "binary_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "metrics": ["accuracy"],
}
PARAMS = {"nevts": -1, "chunk_size": 2000, "epochs": 2, "batch_size": 128, "branch": "Events", "seed": 1}


def fail(call: str, response: requests.Response | None = None, detail: str = "") -> None:
    if response is not None:
        detail = f"HTTP {response.status_code}: {response.text[:2000]}"
    sys.exit(f"e2e: {call} failed: {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin-dir", type=Path, required=True, help="the origin's folder for the files")
    parser.add_argument("--data-url", required=True, help="root:// URL of that folder through the proxy")
    parser.add_argument("--api", required=True, help="base URL of the MLaaS4HEP API")
    parser.add_argument("--tfaas", required=True, help="base URL of TFaaS")
    parser.add_argument("--name", default="molecule.e2e", help="model name in the repository")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    args = parser.parse_args()

    schema = SyntheticSchema(n_flat=4, n_jagged=2)
    files = {}
    for label, shift, seed in (("signal", 1.0, 1), ("background", 0.0, 2)):
        path = write_root_file(args.origin_dir / f"{label}.root", 4000, shift=shift, seed=seed, schema=schema)
        path.chmod(0o644)
        files[label] = path
    urls = [f"{args.data_url}/{files[label].name}" for label in ("signal", "background")]

    workflow = {"name": args.name, "files": urls, "labels": [1, 0], "params": PARAMS, "model": MODEL}
    submitted = requests.post(f"{args.api}/jobs", json=workflow, timeout=60)
    if submitted.status_code not in (200, 201, 202):
        fail("POST /jobs", submitted)
    job_id = submitted.json()["id"]
    print(f"POST /jobs -> {submitted.status_code} job {job_id}", flush=True)

    deadline = time.monotonic() + args.timeout
    while True:
        status = requests.get(f"{args.api}/jobs/{job_id}", timeout=30)
        if status.status_code != 200:
            fail(f"GET /jobs/{job_id}", status)
        job = status.json()
        if job["state"] == "succeeded":
            break
        if job["state"] in ("failed", "cancelled"):
            logs = requests.get(f"{args.api}/jobs/{job_id}/logs", timeout=30).text[-4000:]
            fail(f"job {job_id}", detail=f"{json.dumps(job)[:3000]}\n{logs}")
        if time.monotonic() > deadline:
            fail(f"job {job_id}", detail=f"still {job['state']} after {args.timeout} s")
        time.sleep(2)
    print(f"GET /jobs/{job_id} -> {job['state']}", flush=True)
    # The server publishes under the owner's namespace (local.<name> without an auth front).
    name = job["model_name"]

    # TFaaS reloads the repository by itself; the new model appears within a few seconds.
    deadline = time.monotonic() + 60
    while True:
        params = requests.get(f"{args.tfaas}/params/{name}", timeout=30)
        if params.status_code == 200:
            break
        if time.monotonic() > deadline:
            fail(f"TFaaS GET /params/{name}", params)
        time.sleep(1)
    branches = sorted(set(params.json()["features"]["dataset"]["read_branches"]))
    with uproot.open(files["signal"]) as root_file:
        events = root_file["Events"].arrays(branches, entry_stop=3, library="ak")
    raw = {branch: events[branch].tolist() for branch in events.fields}
    predicted = requests.post(f"{args.tfaas}/json", json={"model": name, "raw": raw}, timeout=60)
    if predicted.status_code != 200:
        fail("TFaaS POST /json", predicted)
    print(f"TFaaS POST /json ({name}, 3 signal events) -> {predicted.text}")


if __name__ == "__main__":
    main()
