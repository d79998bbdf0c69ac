"""The main job on an embedded default: XRootD on loopback, stream, train, serve, predict.

Run through ``bash scripts/demo.sh`` (which installs what is needed first). Steps:
1. generate a signal and a background NanoAOD-like ROOT file (TTrees);
2. start an XRootD origin serving them and the appliance's XRootD proxy in front of it (127.0.0.1);
3. ``mlaas4hep read`` the workflow through the proxy, then ``mlaas4hep train`` it and publish the bundle;
4. start TFaaS on the model repository and ask it for predictions over HTTP, raw branch values included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import uproot

from appliance.data.synthetic import SyntheticSchema, write_root_file
from mlaas4hep_devtools.processes import free_port, running
from mlaas4hep_devtools.xrootd import xrootd_site

# The checkout's files the demo uses: the example model and the XRootD proxy role's template. The code comes
# from the installed packages (scripts/bootstrap.sh installs this checkout into the venv).
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def mlaas4hep(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *args], env=ENV, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        sys.exit(f"mlaas4hep {args[0]} failed with exit code {result.returncode}")
    line = result.stdout.strip().splitlines()[-1]
    print(line)
    return json.loads(line)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-demo-"))
    step(f"generating signal and background ROOT files in {work}")
    schema = SyntheticSchema(n_flat=20, n_jagged=40)
    signal = write_root_file(work / "signal.root", 40_000, shift=0.5, seed=1, schema=schema)
    background = write_root_file(work / "background.root", 40_000, shift=0.0, seed=2, schema=schema)

    with xrootd_site(REPO / "roles" / "xrootd_proxy") as site:
        step(f"XRootD origin on 127.0.0.1:{site.origin_port}, appliance proxy on 127.0.0.1:{site.proxy_port}")
        urls = [site.proxy_url(site.add_file(f, f"store/demo/{f.name}")) for f in (signal, background)]
        (work / "files.txt").write_text("\n".join(urls) + "\n")
        (work / "labels.txt").write_text("1\n0\n")
        params = {
            "nevts": -1,
            "chunk_size": 10_000,
            "epochs": 3,
            "batch_size": 256,
            "jagged_length": "p95",
            "identifier": ["run", "event", "luminosityBlock"],
            "branch": "Events",
            "seed": 1,
        }
        (work / "params.json").write_text(json.dumps(params, indent=1))
        workflow = [
            "--files",
            str(work / "files.txt"),
            "--labels",
            str(work / "labels.txt"),
            "--params",
            str(work / "params.json"),
            "--specs",
            str(work / "specs.json"),
        ]

        step("mlaas4hep read: streaming the workflow through the XRootD proxy")
        mlaas4hep("read", "--quiet", *workflow)

        step("mlaas4hep train: 3 epochs, held-out test set, bundle published into the model repository")
        repo = work / "models"
        trained = mlaas4hep(
            "train",
            *workflow,
            "--model",
            str(REPO / "examples" / "model.json"),
            "--fout",
            str(work / "bundle"),
            "--publish",
            str(repo),
            "--name",
            "demo.higgs",
        )

    serve_predictions(work, repo, trained)
    print(f"\nDemo finished. Files, bundle and model repository are in {work}")


def serve_predictions(work: Path, repo: Path, trained: dict) -> None:
    port = free_port()
    step(f"TFaaS on 127.0.0.1:{port} serving {repo}")
    argv = [sys.executable, "-m", "tfaas", "--model-dir", str(repo), "--port", str(port)]
    with running(argv, port, work / "tfaas.log", env=ENV, timeout=120):
        base = f"http://127.0.0.1:{port}"
        name = trained["name"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            models = requests.get(f"{base}/models", timeout=10).json()
            if any(m.get("name") == name for m in models):
                break
            time.sleep(0.5)
        params = requests.get(f"{base}/params/{name}", timeout=10).json()
        features = params["features"]
        with uproot.open(work / "signal.root") as f:
            events = f["Events"].arrays(
                sorted(set(features["dataset"]["read_branches"])), entry_stop=3, library="ak"
            )
        raw = {b: events[b].tolist() for b in events.fields}
        answer = requests.post(f"{base}/json", json={"model": name, "raw": raw}, timeout=30)
        print(f"POST /json, raw branch values of 3 signal events -> HTTP {answer.status_code}: {answer.text}")


if __name__ == "__main__":
    main()
