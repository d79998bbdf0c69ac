"""TFaaS protocols against ``/json``: TF Serving REST (``instances``, ``inputs``) and KServe v2 JSON, interleaved.

The same benchmark MLP and the same rows on one TFaaS server (gunicorn gthread, 2 workers x 8 threads): single
rows at 16 and 64 clients and 1024-row batches at twice as many clients as workers. Each round visits the four
protocols in turn, so a slow patch of this shared machine hits ``/json`` (the baseline) and the protocol it is
compared with alike; each point is the median of the rounds, with the range. The load average is sampled every
second during the whole run. Before measuring, every body is sent once and its answer checked against
``/json``'s numbers, so that every protocol does the same work.

Over HTTP on this shared 2-core machine the rounds vary a lot (wrk, gunicorn and the other users' work share
the cores). So the server's own cost is also measured without the network: the same bodies through the
TFaaS WSGI app (fast lane and all) called in this process, in interleaved rounds, as microseconds of CPU
per request (the thread's CPU time, which other processes' work does not inflate as it does wall time).

usage: python bench/tfaas_protocols.py [--duration 3] [--rounds 5] [--quick]
Writes bench/results/tfaas_protocols.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
# bench/ (this script's folder, first on the path) holds a package named tfaas, the floor's app: look it up
# after the installed TFaaS, which the in-process measurement imports.
sys.path.append(sys.path.pop(0))
from tfaas_bench import BATCH_ROWS, DIM, build_model, free_port, median_round, serving, warm_up, wrk  # noqa: E402

TARGET = 0.9
PROTOCOLS = {
    "json": ("`/json` (baseline)", "/json"),
    "instances": ("TF Serving REST `instances`", "/v1/models/mlp42:predict"),
    "inputs": ("TF Serving REST `inputs`", "/v1/models/mlp42:predict"),
    "v2": ("KServe v2 JSON", "/v2/models/mlp42/infer"),
}


def bodies(rows: np.ndarray) -> dict[str, Any]:
    """The request body of each protocol for ``rows`` (one row: the protocols' single-row forms)."""
    values = rows.tolist()
    single = len(rows) == 1
    tensor = {"name": "inputs", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    return {
        "json": {
            "keys": [f"f{i}" for i in range(DIM)],
            "values": values[0] if single else values,
            "model": "mlp42",
        },
        "instances": {"instances": values},
        "inputs": {"inputs": values},
        "v2": {"inputs": [tensor]},
    }


def outputs(protocol: str, answer: Any) -> np.ndarray:
    if protocol == "json":
        return np.asarray(answer, dtype=np.float32).reshape(-1)
    if protocol == "instances":
        return np.asarray(answer["predictions"], dtype=np.float32).reshape(-1)
    if protocol == "inputs":
        return np.asarray(answer["outputs"], dtype=np.float32).reshape(-1)
    return np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(-1)


@contextlib.contextmanager
def load_sampler() -> Iterator[list[float]]:
    """The 1-minute load average, sampled every second while the block runs."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(os.getloadavg()[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(5)


def in_process_us(
    models: Path, files: dict[str, dict[str, Path]], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """CPU microseconds per request of each protocol through the WSGI app in this thread, by kind and protocol."""
    from tfaas.api import create_app
    from tfaas.settings import Settings

    app = create_app(Settings(model_dir=models, preload=False))

    def call(path: str, body: bytes) -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
                   "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body), "SERVER_NAME": "bench",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1"}  # fmt: skip
        statuses: list[str] = []
        b"".join(app(environ, lambda status, headers, exc=None: statuses.append(status)))
        if not statuses[0].startswith("200"):
            raise RuntimeError(f"{path}: {statuses[0]}")

    timings: dict[str, dict[str, list[float]]] = {}
    for kind, calls in (("single", 2000), ("batch", 40)):
        bodies_ = {p: files[kind][p].read_bytes() for p in PROTOCOLS}
        timings[kind] = {p: [] for p in PROTOCOLS}
        for protocol, (_, path) in PROTOCOLS.items():
            call(path, bodies_[protocol])
        for _ in range(rounds):
            for protocol, (_, path) in PROTOCOLS.items():
                started = time.thread_time()
                for _ in range(calls):
                    call(path, bodies_[protocol])
                timings[kind][protocol].append((time.thread_time() - started) / calls * 1e6)
    return timings


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    build_model(workdir)
    rng = np.random.default_rng(0)
    rows = rng.uniform(size=(BATCH_ROWS, DIM)).astype(np.float32)
    files: dict[str, dict[str, Path]] = {"single": {}, "batch": {}}
    for kind, chosen in (("single", rows[:1]), ("batch", rows)):
        for protocol, body in bodies(chosen).items():
            path = workdir / f"{kind}-{protocol}.json"
            path.write_text(json.dumps(body))
            files[kind][protocol] = path
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "tfaas", "--model-dir", str(workdir / "models"), "--port", str(port),
            "--workers", str(args.workers), "--threads", str(args.threads)]  # fmt: skip
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    points = [("single", c) for c in args.single_clients] + [("batch", 2 * args.workers)]
    rounds: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {
        point: {p: [] for p in PROTOCOLS} for point in points
    }
    with serving(argv, port, workdir / "tfaas.log", "/v2/health/ready", env):
        for kind in ("single", "batch"):
            expected = None
            for protocol, (_, path) in PROTOCOLS.items():
                answer = requests.post(url + path, data=files[kind][protocol].read_bytes(),
                                       headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
                answer.raise_for_status()
                got = outputs(protocol, answer.json())
                expected = got if expected is None else expected
                np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"{kind} {protocol}")
        for protocol, (_, path) in PROTOCOLS.items():
            warm_up(url + path, files["single"][protocol])
        workers = psutil.Process(requests.get(url + "/status", timeout=30).json()["pid"]).parent().children()
        with load_sampler() as load:
            started = time.time()
            for point in points:
                kind, clients = point
                for _ in range(args.rounds):
                    for protocol, (_, path) in PROTOCOLS.items():
                        cpu_before = _cpu_s(workers)
                        result = wrk(url + path, files[kind][protocol], clients, args.duration)
                        result["server_cpu_us"] = (
                            (_cpu_s(workers) - cpu_before) / max(1, result["requests"]) * 1e6
                        )
                        rounds[point][protocol].append(result)
            elapsed = time.time() - started
    with load_sampler() as in_process_load:
        in_process = in_process_us(workdir / "models", files, args.rounds)
    return {
        "in_process": in_process,
        "in_process_load": in_process_load,
        "points": {point: {p: median_round(r) for p, r in by.items()} for point, by in rounds.items()},
        "ratios": {point: {p: _ratios(by[p], by["json"]) for p in PROTOCOLS} for point, by in rounds.items()},
        "cpu": {
            point: {p: [r["server_cpu_us"] for r in by[p]] for p in PROTOCOLS} for point, by in rounds.items()
        },
        "load": load,
        "elapsed_s": elapsed,
    }


def _cpu_s(workers: list[psutil.Process]) -> float:
    """CPU seconds the TFaaS workers have used (user and system)."""
    return sum(sum(w.cpu_times()[:2]) for w in workers)


def _ratios(measured: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[float]:
    """The ratio of each round to the baseline's in the same round (they ran one after the other)."""
    return [m["rps"] / b["rps"] for m, b in zip(measured, baseline, strict=True)]


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    load = result["load"] or [os.getloadavg()[0]]
    lines = [
        "# TFaaS protocols against `/json`",
        "",
        f"`bench/tfaas_protocols.py`, {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs. The benchmark MLP ({DIM} inputs) on one TFaaS server, gunicorn gthread "
        f"{args.workers} workers x {args.threads} threads, wrk on loopback sharing the CPUs. Each point: "
        f"{args.rounds} rounds of {args.duration:g} s; a round visits `/json` and the three other protocols in "
        "turn. req/s is the median round with the range over the rounds; the ratio is the median of each "
        "round's ratio to `/json` in the same round, with its range. "
        f"Load average (1 min) during the run, sampled every second: min {min(load):.2f}, median "
        f"{float(np.median(load)):.2f}, max {max(load):.2f} ({result['elapsed_s']:.0f} s).",
        *(["", "**Smoke run** (one round per point): noisy figures."] if args.rounds < 3 else []),
        "",
        "Server CPU per request: the CPU time of the TFaaS workers during the round over its requests; its ratio "
        "(`/json`'s over the protocol's, the median of the rounds) is what throughput would be when the server "
        "alone is CPU-bound, and is far less sensitive to the other processes on the machine than req/s.",
        "",
        "| rows per request | clients | protocol | req/s | range | ratio to `/json` | ratio range | server CPU us "
        "per request | CPU ratio to `/json` | p50 ms | p99 ms | errors |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    worst_single, worst_batch, worst_cpu_single, worst_cpu_batch = [], [], [], []
    for (kind, clients), by_protocol in result["points"].items():
        cpu = result["cpu"][(kind, clients)]
        for protocol, r in by_protocol.items():
            ratios = result["ratios"][(kind, clients)][protocol]
            ratio = float(np.median(ratios))
            cpu_ratio = float(np.median([b / m for m, b in zip(cpu[protocol], cpu["json"], strict=True)]))
            if protocol != "json":
                (worst_single if kind == "single" else worst_batch).append(ratio)
                (worst_cpu_single if kind == "single" else worst_cpu_batch).append(cpu_ratio)
            lines.append(
                f"| {1 if kind == 'single' else BATCH_ROWS} | {clients} | {PROTOCOLS[protocol][0]} | "
                f"{r['rps']:,.0f} | {r['rps_min']:,.0f}-{r['rps_max']:,.0f} | {ratio:.2f} | "
                f"{min(ratios):.2f}-{max(ratios):.2f} | {float(np.median(cpu[protocol])):,.0f} | {cpu_ratio:.2f} | "
                f"{r['p50_us'] / 1e3:.2f} | {r['p99_us'] / 1e3:.2f} | {r['errors'] + r['non2xx']} |"
            )
    in_load = result["in_process_load"] or [os.getloadavg()[0]]
    lines += [
        "",
        "The server's own cost, without the network: CPU microseconds per request through the TFaaS WSGI app "
        f"in the benchmark's process (one thread), median of {args.rounds} interleaved rounds; the ratio is "
        "`/json`'s time over the protocol's (a throughput ratio). Load average meanwhile: "
        f"min {min(in_load):.2f}, median {float(np.median(in_load)):.2f}, max {max(in_load):.2f}.",
        "",
        "| rows per request | protocol | CPU us per request | range | ratio to `/json` |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for kind, by_protocol in result["in_process"].items():
        baseline = float(np.median(by_protocol["json"]))
        for protocol, timings in by_protocol.items():
            median = float(np.median(timings))
            lines.append(
                f"| {1 if kind == 'single' else BATCH_ROWS} | {PROTOCOLS[protocol][0]} | {median:,.1f} | "
                f"{min(timings):,.1f}-{max(timings):,.1f} | {baseline / median:.2f} |"
            )
    lines += [
        "",
        "| target (over HTTP) | wanted | measured (lowest protocol) | met |",
        "| --- | ---: | ---: | :---: |",
        f"| v1 and v2 JSON single rows / `/json` | >= {TARGET} | {min(worst_single):.3f} | "
        f"{'yes' if min(worst_single) >= TARGET else '**no**'} |",
        f"| v1 and v2 JSON {BATCH_ROWS}-row batches / `/json` | >= {TARGET} | {min(worst_batch):.3f} | "
        f"{'yes' if min(worst_batch) >= TARGET else '**no**'} |",
        f"| the same by the server's CPU per request, single rows | >= {TARGET} | {min(worst_cpu_single):.3f} | "
        f"{'yes' if min(worst_cpu_single) >= TARGET else '**no**'} |",
        f"| the same by the server's CPU per request, {BATCH_ROWS}-row batches | >= {TARGET} | "
        f"{min(worst_cpu_batch):.3f} | {'yes' if min(worst_cpu_batch) >= TARGET else '**no**'} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of 2 s per point")
    parser.add_argument("--single-clients", default="16,64")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "tfaas_protocols.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    args.single_clients = [int(c) for c in args.single_clients.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tfaas-protocols-"))
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(result, args))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
