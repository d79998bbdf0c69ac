"""Batch inference throughput: ``mlaas4hep predict`` events/s against raw reading of the same branches.

    .venv/bin/python bench/predict_bench.py [--events 200000] [--rounds 3] [--out bench/results/predict.md]

Two generated files (NanoAOD-like, 20 flat and 40 jagged branches) and a small model trained on them (with a
cut and a new branch, as an analysis would). Each round measures, in turn on the same files:

1. the baseline: a bare ``uproot.iterate`` of exactly the branches predict reads (those the model needs);
2. ``run_predict`` as the command runs it by default: a local Dask cluster of 2 worker threads started and
   stopped by the call, friend trees written and renamed;
3. the same with a local cluster of 2 worker processes (``--processes``), each starting and importing
   TensorFlow;
4. ``run_predict`` on a Dask cluster of 2 worker processes already running (``--scheduler``), which leaves out
   the cluster's start and the workers' TensorFlow import.

The rounds interleave the four, so drift of a shared machine hits them alike; each figure is the median over
the rounds, and each ratio is against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import uproot

from appliance.data.synthetic import SyntheticSchema, write_root_file
from appliance.inference.bundle import load_bundle
from appliance.inference.predict import PredictOptions, run_predict
from appliance.training.run import run_training

REPO = Path(__file__).resolve().parents[1]
STEP = 50_000
MODEL = {
    "layers": [
        {"type": "Dense", "units": 64, "activation": "relu"},
        {"type": "Dense", "units": 32, "activation": "relu"},
        {"type": "Dense", "units": 1, "activation": "sigmoid"},
    ],
    "loss": "binary_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.001},
}
PREPROC = {
    "new_branch": {"met_ratio": {"def": "MET_pt / (MET_sumEt + 1)", "type": "flat"}},
    "flat_cut": {"MET_pt": {"cut": "MET_pt > 20"}},
}


def train(work: Path, files: list[Path]) -> Path:
    (work / "files.txt").write_text("".join(f"{f}\n" for f in files))
    (work / "labels.txt").write_text("1\n0\n")
    (work / "params.json").write_text(json.dumps({"epochs": 1, "nevts": 20_000, "jagged_length": "p99"}))
    (work / "preproc.json").write_text(json.dumps(PREPROC))
    (work / "model.json").write_text(json.dumps(MODEL))
    result = run_training(
        files=work / "files.txt",
        labels=work / "labels.txt",
        params=work / "params.json",
        preproc=work / "preproc.json",
        model=work / "model.json",
        fout=work / "bundle",
    )
    return Path(result["bundle"])


def raw_iterate(files: list[str], branches: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    events = 0
    for arrays in uproot.iterate(
        [f"{f}:Events" for f in files], branches, step_size=STEP, library="ak", how=dict
    ):
        events += len(arrays[branches[0]])
    return events, time.perf_counter() - started


def predict(files: list[str], bundle: Path, out: Path, options: PredictOptions) -> tuple[int, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = run_predict(files, bundle, out, options)
    return summary["events"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per file (two files)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "predict.md"))
    args = parser.parse_args()

    from distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        work = Path(tmp)
        schema = SyntheticSchema(20, 40)
        files = [
            write_root_file(work / "signal.root", args.events, shift=1.0, seed=1, schema=schema),
            write_root_file(work / "background.root", args.events, shift=0.0, seed=2, schema=schema),
        ]
        bundle_dir = train(work, files)
        bundle = load_bundle(bundle_dir)
        branches = list(bundle.needed_branches())
        urls = [str(f) for f in files]
        per_call = PredictOptions(workers=args.workers)
        per_call_processes = PredictOptions(workers=args.workers, processes=True)
        timings: dict[str, list[float]] = {"raw": [], "predict": [], "processes": [], "running": []}
        events = 0
        with LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            env={"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"},
        ) as cluster:
            running = PredictOptions(scheduler=cluster.scheduler_address)
            predict(urls, bundle_dir, work / "warm", running)  # load the model on the running workers
            for round_ in range(args.rounds):
                n, seconds = raw_iterate(urls, branches)
                timings["raw"].append(n / seconds)
                n_p, seconds = predict(urls, bundle_dir, work / "friends", per_call)
                timings["predict"].append(n_p / seconds)
                n_s, seconds = predict(urls, bundle_dir, work / "friends", per_call_processes)
                timings["processes"].append(n_s / seconds)
                n_r, seconds = predict(urls, bundle_dir, work / "friends", running)
                timings["running"].append(n_r / seconds)
                assert n == n_p == n_s == n_r, (n, n_p, n_s, n_r)
                events = n
                print(
                    f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} ev/s" for k, v in timings.items())
                )
        medians = {k: statistics.median(v) for k, v in timings.items()}
        ranges = {k: f"{min(v):,.0f}-{max(v):,.0f}" for k, v in timings.items()}
        text = report(args, events, len(branches), bundle.spec.dim, medians, ranges)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def report(
    args: argparse.Namespace,
    events: int,
    n_branches: int,
    dim: int,
    medians: dict[str, float],
    ranges: dict[str, str],
) -> str:
    base = medians["raw"]
    rows = [
        ("raw `uproot.iterate` of the same branches (baseline)", "raw"),
        (f"`mlaas4hep predict` (default): local cluster of {args.workers} threads", "predict"),
        (f"`mlaas4hep predict --processes`: local cluster of {args.workers} processes", "processes"),
        (f"`run_predict` on a running Dask cluster ({args.workers} worker processes)", "running"),
    ]
    table = "\n".join(
        f"| {label} | {medians[key]:,.0f} | {ranges[key]} | **{medians[key] / base:.2f}** |"
        for label, key in rows
    )
    return f"""# Batch inference (issue 17)

`bench/predict_bench.py`, {datetime.now(UTC).isoformat(timespec="seconds")}, {platform.node()}, \
{os.cpu_count()} CPUs, Python {platform.python_version()}, uproot {uproot.__version__}.

{events:,} events in two generated local files (20 flat + 40 jagged branches); the model reads {n_branches}
branches (its features, a new branch and a cut) into {dim} inputs, a 64x32x1 MLP. Predict reads them, applies
the cut and the feature spec, runs the SavedModel on every passing event and writes one friend tree per file.
Median of {args.rounds} interleaved rounds (raw read, then the three ways to predict, in turn).

| measurement | events/s | range over rounds | ratio to raw reading |
| --- | ---: | ---: | ---: |
{table}

A local cluster of processes pays, at every call, each worker's start and TensorFlow import; threads share the
calling process's (TensorFlow, uproot's decompression and NumPy run outside the GIL), hence the default. On a
running cluster (`--scheduler`) only the reading, the transformation, the model and the writing remain.
The machine's load average at the end was {os.getloadavg()[0]:.2f} (other work shares its cores): when it is high, rounds vary widely, as the
ranges show; compare figures from a quiet machine.
"""


if __name__ == "__main__":
    main()
