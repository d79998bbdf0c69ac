"""TFaaS benchmark: the 42x128x128x128x64x64x1 MLP of the original TFaaS, served over HTTP on loopback with wrk.

One piece although above 400 lines: every server of the comparison (floor, TFaaS with SavedModel and ONNX
bundles, the in-process baseline, the peer) runs for the whole run and is measured in the same interleaved
rounds, so their set-up and the rounds are one timeline.

Measured in one run, each against its baseline from the same run:
- single-row ``/json`` requests/s and p50/p99 latency at 1, 16 and 64 clients, against the HTTP floor (a bare
  WSGI app under gunicorn with the same workers that parses the same JSON and returns a constant);
- 1024-row batches in rows/s, against calling the SavedModel in-process;
- the same single-row load on ``mlflow models serve`` of the same model, the peer (when an MLflow venv is given);
- the same network as an ONNX bundle (``"runtime": "onnx"``, what training writes for PyTorch models, served
  with onnxruntime) on the same TFaaS server, beside the SavedModel's figures.

usage: python bench/tfaas_bench.py [--duration 4] [--rounds 5] [--quick] [--mlflow-python PYTHON]
Writes bench/results/tfaas.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

HERE = Path(__file__).resolve().parent / "tfaas"
DIM = 42
HIDDEN = (128, 128, 128, 64, 64)
BATCH_ROWS = 1024
ONNX_SERVER = "tfaas, the same network as an ONNX bundle"
TARGETS = {"throughput_vs_floor": 0.7, "p50_single_client_ms": 1.0, "batch_vs_in_process": 0.5}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    argv: list[str], port: int, log: Path, ready_path: str, env: dict[str, str] | None = None
) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        deadline, streak = time.monotonic() + 300, 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited early:\n{log.read_text()[-3000:]}")
            status = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"http://127.0.0.1:{port}{ready_path}",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            # The floor answers GET with an error, which is fine; TFaaS must say it is ready in a row of
            # probes on fresh connections, so that every worker has loaded the model.
            ready = status != "000" if ready_path == "/" else status == "200"
            streak = streak + 1 if ready else 0
            if streak >= (1 if ready_path == "/" else 20):
                break
            time.sleep(0.5 if not streak else 0.01)
        else:
            raise TimeoutError(f"{argv} did not become ready")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wrk(
    url: str, body: Path, connections: int, duration: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WRK_BODY": str(body), **(headers or {})},
    ).stdout
    match = re.search(r"^WRKJSON (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary from wrk:\n{out}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def warm_up(url: str, body: Path) -> None:
    """Load the model in every worker and let the JIT-less Python warm its caches."""
    wrk(url, body, 8, 2)


# -- the model -------------------------------------------------------------------------------------------


def build_model(workdir: Path) -> tuple[Path, Path]:
    """The benchmark MLP as a TFaaS bundle in ``workdir/models/mlp42/1`` and as a ``.keras`` file."""
    import keras

    from appliance.training.bundle import export_saved_model, params_document

    keras.utils.set_random_seed(42)
    inputs = keras.Input((DIM,), name="inputs")
    x = inputs
    for units in HIDDEN:
        x = keras.layers.Dense(units, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    bundle = workdir / "models" / "mlp42" / "1"
    bundle.parent.mkdir(parents=True)
    export_saved_model(model, bundle, DIM)
    params = params_document("mlp42", {}, version=1)
    del params["features"]
    (bundle / "params.json").write_text(json.dumps(params))
    (bundle / "labels.txt").write_text("signal\n")
    keras_file = workdir / "mlp42.keras"
    model.save(keras_file)
    return bundle, keras_file


def build_onnx_twin(bundle: Path, workdir: Path, rows: np.ndarray) -> Path:
    """The benchmark MLP as an ONNX bundle ``workdir/models/mlp42onnx/1``: the same weights in a
    ``torch.nn.Sequential``, exported as training exports PyTorch models; checked against the SavedModel."""
    import keras
    import tensorflow as tf
    import torch

    from appliance.training.onnx_export import OPSET

    signature = tf.saved_model.load(str(bundle)).signatures["serving_default"]
    saved_model_outputs = signature(inputs=tf.constant(rows))["outputs"].numpy()
    keras_model = keras.models.load_model(workdir / "mlp42.keras")
    layers: list[Any] = []
    for dense in [layer for layer in keras_model.layers if isinstance(layer, keras.layers.Dense)]:
        kernel, bias = (np.asarray(w) for w in dense.get_weights())
        linear = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers[:-1], torch.nn.Sigmoid()).eval()
    twin = workdir / "models" / "mlp42onnx" / "1"
    twin.mkdir(parents=True)
    torch.onnx.export(
        module,
        (torch.zeros((2, DIM), dtype=torch.float32),),
        str(twin / "model.onnx"),
        input_names=["inputs"],
        output_names=["outputs"],
        dynamic_axes={"inputs": {0: "batch"}, "outputs": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    params = json.loads((bundle / "params.json").read_text())
    params.update(name="mlp42onnx", runtime="onnx", model="model.onnx", framework="torch", servable=True)
    (twin / "params.json").write_text(json.dumps(params))
    (twin / "labels.txt").write_text("signal\n")
    with torch.no_grad():
        twin_outputs = module(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(twin_outputs, saved_model_outputs, rtol=1e-5, atol=1e-5)
    return twin


class InProcess:
    """The SavedModel called directly in this process (TensorFlow's own threading): the batch baseline."""

    def __init__(self, bundle: Path, rows: np.ndarray) -> None:
        import tensorflow as tf

        self._signature = tf.saved_model.load(str(bundle)).signatures["serving_default"]
        self._batch = tf.constant(rows)
        self._single = tf.constant(rows[:1])
        for _ in range(5):
            self._signature(inputs=self._batch)
            self._signature(inputs=self._single)

    def batch_rows_per_s(self, duration: float) -> float:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            self._signature(inputs=self._batch)["outputs"].numpy()
            calls += 1
        return calls * int(self._batch.shape[0]) / (time.perf_counter() - start)

    def single_p50_ms(self, duration: float) -> float:
        timings = []
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            self._signature(inputs=self._single)["outputs"].numpy()
            timings.append(time.perf_counter() - started)
        return float(np.median(timings) * 1e3)


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median rate, with the range of the rates over all rounds."""
    ordered = sorted(rounds, key=lambda r: r["rps"])
    return {**ordered[len(ordered) // 2], "rps_min": ordered[0]["rps"], "rps_max": ordered[-1]["rps"]}


# -- the run ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk measurement")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds per point; the median round is reported"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of 2 s per point")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--mlflow-python",
        default="/tmp/mlflow-venv/bin/python",
        help="Python of a venv with mlflow (and TensorFlow importable); skipped if absent",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "tfaas.md")
    args = parser.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    if args.quick:
        args.rounds = 1
    connections = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tfaas-bench-"))
    try:
        results = run(args, duration, connections, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(results, args, duration, connections))
    print(args.output.read_text())
    return 0


def run(args: argparse.Namespace, duration: float, connections: list[int], workdir: Path) -> dict[str, Any]:
    bundle, keras_file = build_model(workdir)
    rng = np.random.default_rng(0)
    rows = rng.uniform(size=(BATCH_ROWS, DIM)).astype(np.float32)
    single = workdir / "single.json"
    single.write_text(
        json.dumps({"keys": [f"f{i}" for i in range(DIM)], "values": rows[0].tolist(), "model": "mlp42"})
    )
    batch = workdir / "batch.json"
    batch.write_text(json.dumps({"values": rows.tolist(), "model": "mlp42"}))
    # The same rows with KServe v2's binary data extension, as Triton clients send large tensors.
    tensor = {"name": "inputs", "shape": list(rows.shape), "datatype": "FP32",
              "parameters": {"binary_data_size": rows.nbytes}}  # fmt: skip
    binary_header = json.dumps({"inputs": [tensor]}).encode()
    binary = workdir / "batch.bin"
    binary.write_bytes(binary_header + rows.astype("<f4").tobytes())
    binary_env = {"WRK_CONTENT_TYPE": "application/octet-stream",
                  "WRK_INFERENCE_HEADER_LENGTH": str(len(binary_header))}  # fmt: skip
    build_onnx_twin(bundle, workdir, rows)
    single_onnx = workdir / "single_onnx.json"
    single_onnx.write_text(json.dumps({**json.loads(single.read_text()), "model": "mlp42onnx"}))
    batch_onnx = workdir / "batch_onnx.json"
    batch_onnx.write_text(json.dumps({"values": rows.tolist(), "model": "mlp42onnx"}))
    in_process = InProcess(bundle, rows)
    gunicorn_env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as servers:
        # Every server runs for the whole run, idle while another is measured, and each point is measured
        # in rounds that visit the servers in turn: a slow patch of this shared machine then hits the
        # baseline and TFaaS alike instead of skewing their ratio.
        urls = {}
        port = free_port()
        floor = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
                 "--workers", str(args.workers), "--threads", str(args.threads), "--no-control-socket",
                 "--chdir", str(ROOT), "bench.tfaas.floor:app"]  # fmt: skip
        servers.enter_context(serving(floor, port, workdir / "floor.log", "/", gunicorn_env))
        urls["floor"] = f"http://127.0.0.1:{port}"
        variants = (
            ("tfaas", {}),
            ("tfaas, batching on for NumPy-run models too", {"TFAAS_BATCHING_NUMPY_MODELS": "true"}),
        )
        for variant, env in variants:
            port = free_port()
            argv = [sys.executable, "-m", "tfaas", "--model-dir", str(workdir / "models"), "--port", str(port),
                    "--workers", str(args.workers), "--threads", str(args.threads)]  # fmt: skip
            log = workdir / f"tfaas-{len(urls)}.log"
            servers.enter_context(serving(argv, port, log, "/v2/health/ready", {**gunicorn_env, **env}))
            urls[variant] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            warm_up(f"{url}/json", single)
        warm_up(f"{urls['tfaas']}/json", single_onnx)

        single_rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
            u: {c: [] for c in connections} for u in (*urls, ONNX_SERVER)
        }
        for c in connections:
            for _ in range(args.rounds):
                for server, url in urls.items():
                    single_rounds[server][c].append(wrk(f"{url}/json", single, c, duration))
                single_rounds[ONNX_SERVER][c].append(wrk(f"{urls['tfaas']}/json", single_onnx, c, duration))
        for server, by_clients in single_rounds.items():
            results[server] = {c: median_round(rounds) for c, rounds in by_clients.items()}

        # gunicorn hands a kept-alive connection to whichever worker accepts it first, so as many
        # connections as workers sometimes share one worker: twice as many fill them all.
        batch_clients = (1, args.workers, 2 * args.workers)
        tfaas_url = urls["tfaas"]
        batch_rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
            "batch": {c: [] for c in batch_clients},
            "batch_binary": {c: [] for c in batch_clients},
            "batch_onnx": {c: [] for c in batch_clients},
        }
        in_process_rates = []
        for c in batch_clients:
            for _ in range(args.rounds):
                in_process_rates.append(in_process.batch_rows_per_s(duration))
                batch_rounds["batch"][c].append(wrk(f"{tfaas_url}/json", batch, c, duration))
                batch_rounds["batch_onnx"][c].append(wrk(f"{tfaas_url}/json", batch_onnx, c, duration))
                batch_rounds["batch_binary"][c].append(
                    wrk(f"{tfaas_url}/v2/models/mlp42/infer", binary, c, duration, binary_env)
                )
        for key, by_clients in batch_rounds.items():
            results[key] = {c: median_round(rounds) for c, rounds in by_clients.items()}
        results["in_process"] = {
            "batch_rows_per_s": float(np.median(in_process_rates)),
            "batch_rows_per_s_range": (min(in_process_rates), max(in_process_rates)),
            "single_p50_ms": in_process.single_p50_ms(min(duration, 3)),
        }

    mlflow_python = Path(args.mlflow_python)
    if mlflow_python.exists():
        try:
            results["mlflow"] = run_mlflow(
                mlflow_python, keras_file, rows, workdir, args.workers, connections, duration
            )
        except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as err:
            results["mlflow_error"] = str(err)[-500:]
    else:
        results["mlflow_error"] = f"no MLflow venv at {mlflow_python}"
    return results


def run_mlflow(
    python: Path,
    keras_file: Path,
    rows: np.ndarray,
    workdir: Path,
    workers: int,
    connections: list[int],
    duration: float,
) -> dict[int, dict[str, Any]]:
    model_dir = workdir / "mlflow_model"
    subprocess.run(
        [str(python), str(HERE / "mlflow_model.py"), str(keras_file), str(model_dir)],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    body = workdir / "mlflow_single.json"
    body.write_text(json.dumps({"inputs": [rows[0].tolist()]}))
    port = free_port()
    argv = [
        str(python.parent / "mlflow"),
        "models",
        "serve",
        "-m",
        str(model_dir),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--env-manager",
        "local",
        "-w",
        str(workers),
    ]
    env = {"PATH": f"{python.parent}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with serving(argv, port, workdir / "mlflow.log", "/ping", env):
        url = f"http://127.0.0.1:{port}/invocations"
        warm_up(url, body)
        return {c: median_round([wrk(url, body, c, duration)]) for c in connections}


# -- the report ------------------------------------------------------------------------------------------


def report(results: dict[str, Any], args: argparse.Namespace, duration: float, connections: list[int]) -> str:
    floor = results["floor"]
    lines = [
        "# TFaaS benchmark",
        "",
        f"Model: {DIM}x{'x'.join(map(str, HIDDEN))}x1 MLP (the original TFaaS benchmark model). "
        f"wrk on loopback; gunicorn gthread with {args.workers} workers x {args.threads} threads for the floor "
        f"and TFaaS. Each point is the median of {args.rounds} rounds of {duration:g} s; the rounds visit the "
        "servers (and, for batches, the in-process baseline) in turn, so that drift of this shared machine hits "
        "baseline and TFaaS alike. The req/s range over the rounds is shown. "
        f"Host: {platform.node()}, {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}. "
        f"Run: {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "Every ratio is against a baseline measured in this same run.",
        *(
            ["", "**Smoke run** (one short round per point): the figures are noisy."]
            if args.rounds < 3
            else []
        ),
        "",
        "## Single-row `/json`",
        "",
        "| server | clients | req/s | range over rounds | ratio to floor | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    servers = ["floor", "tfaas", ONNX_SERVER, "tfaas, batching on for NumPy-run models too", "mlflow"]
    for server in servers:
        for c in connections:
            r = results.get(server, {}).get(c)
            if r is None:
                continue
            lines.append(
                f"| {server} | {c} | {r['rps']:,.0f} | {_range(r)} | {r['rps'] / floor[c]['rps']:.2f} "
                f"| {r['p50_us'] / 1e3:.2f} | {r['p99_us'] / 1e3:.2f} | {r['errors'] + r['non2xx']} |"
            )
    if "mlflow_error" in results:
        lines += ["", f"MLflow was not measured: {results['mlflow_error']}"]
    in_proc = results["in_process"]
    lines += [
        "",
        f"## {BATCH_ROWS}-row batches",
        "",
        "Rows per second at 1 client, and at as many and twice as many clients as workers; a target below takes "
        "the best of them (the throughput when every worker is busy).",
        "",
        "| path | clients | rows/s | range over rounds | ratio to in-process |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| SavedModel called in-process | - | {in_proc['batch_rows_per_s']:,.0f} | "
        f"{in_proc['batch_rows_per_s_range'][0]:,.0f}-{in_proc['batch_rows_per_s_range'][1]:,.0f} | 1.00 |",
    ]
    for key, label in (
        ("batch", "TFaaS `/json`"),
        ("batch_onnx", "TFaaS `/json`, the same network as an ONNX bundle"),
        ("batch_binary", "TFaaS KServe v2 binary tensors"),
    ):
        for c, r in results.get(key, {}).items():
            rate = r["rps"] * BATCH_ROWS
            lines.append(
                f"| {label} | {c} | {rate:,.0f} | {_range(r, BATCH_ROWS)} | "
                f"{rate / in_proc['batch_rows_per_s']:.2f} |"
            )
    best_batch = max(r["rps"] * BATCH_ROWS for r in results["batch"].values()) / in_proc["batch_rows_per_s"]
    best_binary = max((r["rps"] * BATCH_ROWS for r in results.get("batch_binary", {}).values()), default=0.0)
    best_binary /= in_proc["batch_rows_per_s"]
    tfaas = results["tfaas"]
    ratios = [tfaas[c]["rps"] / floor[c]["rps"] for c in (16, 64) if c in tfaas]
    p50 = tfaas[1]["p50_us"] / 1e3 if 1 in tfaas else float("nan")
    lines += [
        "",
        "## Targets",
        "",
        "| target | wanted | measured | met |",
        "| --- | ---: | ---: | :---: |",
        f"| single-row throughput / floor at 16 and 64 clients | >= {TARGETS['throughput_vs_floor']} | "
        f"{', '.join(f'{r:.2f}' for r in ratios)} | {_yes(all(r >= TARGETS['throughput_vs_floor'] for r in ratios))} |",
        f"| single-client p50 latency | < {TARGETS['p50_single_client_ms']} ms | {p50:.2f} ms | "
        f"{_yes(p50 < TARGETS['p50_single_client_ms'])} |",
        f"| {BATCH_ROWS}-row `/json` batch rows/s / in-process | >= {TARGETS['batch_vs_in_process']} | "
        f"{best_batch:.2f} | "
        f"{_yes(best_batch >= TARGETS['batch_vs_in_process'])} |",
        *(
            [
                f"| {BATCH_ROWS}-row batch as KServe v2 binary tensors / in-process | >= "
                f"{TARGETS['batch_vs_in_process']} | {best_binary:.2f} | "
                f"{_yes(best_binary >= TARGETS['batch_vs_in_process'])} |"
            ]
            if results.get("batch_binary")
            else []
        ),
        "",
        f"In-process single-row call of the SavedModel: p50 {in_proc['single_p50_ms']:.2f} ms (TensorFlow's "
        "per-call overhead, which TFaaS avoids for dense graphs with its NumPy engine).",
        "",
    ]
    return "\n".join(lines)


def _range(result: dict[str, Any], scale: int = 1) -> str:
    return f"{result['rps_min'] * scale:,.0f}-{result['rps_max'] * scale:,.0f}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


if __name__ == "__main__":
    sys.exit(main())
