"""TFaaS soak: 64 clients on ``/json`` for N minutes while a model of the same name is republished every 10 s.

One piece although above 400 lines: the load, the probe, the republisher and the report share one
timeline, and a benchmark is read top to bottom.

Reports (bench/results/soak.md): non-2xx answers and socket errors, silent seconds (a second in which no
request was answered), p99 and maximum latency during reloads against the rest, the workers' RSS growth, and
the load average sampled every second.

The load generator is wrk, in consecutive 1 s runs ("slices"), each of which prints its count, errors and
latency quantiles: wrk costs far less CPU per request than any Python client, which would compete with the
server for the machine's two cores, and one slice per second gives per-second figures without a patched wrk.
A request still running when its slice ends is not counted by wrk, so a separate probe (one Python thread,
one request every 50 ms on its own connection, timed end to end) measures the longest answers and any gap
without an answer exactly. A reload window is from the start of an upload to 3 s after its answer (the other
worker rescans every second and then loads the new version).

usage: python bench/soak.py [--minutes 5] [--clients 64] [--republish-s 10] [--workers 2] [--oidc]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
from tfaas_bench import DIM, build_model, free_port, serving  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RELOAD_TAIL_S = 3.0
QUANTILES = [*range(1, 100), 99.5, 99.9]

# Each slice prints one line: count, errors, and latency quantiles in microseconds (and the maximum).
SLICE_LUA = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("WRK_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
local quantiles = {@QUANTILES@}
function done(summary, latency, requests)
  local values = {}
  for i, q in ipairs(quantiles) do values[i] = latency:percentile(q) end
  local e = summary.errors
  io.write(string.format('SLICE {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"max_us": %d, "quantiles_us": [%s]}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency.max, table.concat(values, ",")))
end
""".replace("@QUANTILES@", ", ".join(str(q) for q in QUANTILES))


@dataclass
class Slice:
    started: float
    ended: float
    requests: int
    errors: int
    non2xx: int
    max_us: int
    quantiles_us: list[int]


@dataclass
class Samples:
    """What the side threads record, each with its time.monotonic()."""

    uploads: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, status
    probes: list[tuple[float, float, int]] = field(
        default_factory=list
    )  # start, latency s, status (0: error)
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # time, sum of workers' RSS, workers
    load: list[tuple[float, float]] = field(default_factory=list)  # time, 1-minute load average
    upload_errors: list[str] = field(default_factory=list)


def wrk_slice(url: str, body: Path, script: Path, clients: int, token: str | None) -> Slice:
    started = time.monotonic()
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", "-d1s", "--timeout", "5s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WRK_BODY": str(body), "WRK_TOKEN": token or ""},
    ).stdout
    match = re.search(r"^SLICE (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary from wrk:\n{out}")
    data = json.loads(match.group(1))
    return Slice(
        started,
        time.monotonic(),
        data["requests"],
        data["errors"],
        data["non2xx"],
        data["max_us"],
        data["quantiles_us"],
    )


def bundle_tar(bundle: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(bundle, arcname=name)
    return buffer.getvalue()


def workers_of(port: int) -> list[psutil.Process]:
    """The gunicorn workers serving ``port``: the children of the process listening on it."""
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            master = psutil.Process(conn.pid)
            if master.children():
                return master.children()
    # The listening socket is shared: find the master as the parent of the one holding it.
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "tfaas" in cmdline and "--port" in cmdline and str(port) in cmdline:
            return proc.children()
    return []


def side_threads(
    url: str,
    port: int,
    tar: bytes,
    model: str,
    args: argparse.Namespace,
    headers: dict[str, str],
    stop: threading.Event,
) -> tuple[Samples, list[threading.Thread]]:
    samples = Samples()
    single = {"keys": [f"f{i}" for i in range(DIM)], "values": [0.5] * DIM, "model": model}

    def republish() -> None:
        with requests.Session() as session:
            while not stop.wait(args.republish_s):
                started = time.monotonic()
                try:
                    status = session.post(
                        f"{url}/upload",
                        data=tar,
                        headers={**headers, "Content-Type": "application/gzip"},
                        timeout=120,
                    ).status_code
                except requests.RequestException as err:
                    samples.upload_errors.append(str(err)[:300])
                    status = 0
                samples.uploads.append((started, time.monotonic(), status))

    def probe() -> None:
        with requests.Session() as session:
            while not stop.wait(0.05):
                started = time.monotonic()
                try:
                    status = session.post(f"{url}/json", json=single, headers=headers, timeout=30).status_code
                except requests.RequestException:
                    status = 0
                samples.probes.append((started, time.monotonic() - started, status))

    def sample() -> None:
        while not stop.wait(1.0):
            workers = workers_of(port)
            rss = 0
            for worker in workers:
                with contextlib.suppress(psutil.Error):
                    rss += worker.memory_info().rss
            samples.rss.append((time.monotonic(), rss, len(workers)))
            samples.load.append((time.monotonic(), os.getloadavg()[0]))

    threads = [threading.Thread(target=target, daemon=True) for target in (republish, probe, sample)]
    return samples, threads


def merged_quantile(slices: list[Slice], q: float) -> float:
    """The q-th percentile over several slices, each slice's quantiles standing for its share of requests."""
    values, weights = [], []
    for s in slices:
        if s.requests:
            values.extend(s.quantiles_us)
            weights.extend([s.requests / len(s.quantiles_us)] * len(s.quantiles_us))
    if not values:
        return float("nan")
    order = np.argsort(values)
    cumulative = np.cumsum(np.asarray(weights)[order])
    index = int(np.searchsorted(cumulative, q / 100 * cumulative[-1]))
    return float(np.asarray(values)[order][min(index, len(values) - 1)]) / 1000


def in_reload(start: float, end: float, uploads: list[tuple[float, float, int]]) -> bool:
    return any(start < u_end + RELOAD_TAIL_S and end > u_start for u_start, u_end, _ in uploads)


def silent_seconds(probes: list[tuple[float, float, int]], slices: list[Slice], t0: float, t1: float) -> int:
    """Whole seconds of [t0, t1) in which neither wrk nor the probe got an answer."""
    answered = np.zeros(int(t1 - t0) + 1, dtype=bool)
    for s in slices:
        if s.requests:
            answered[int(s.started - t0) : int(s.ended - t0) + 1] = True
    for started, latency, status in probes:
        if status:
            answered[min(int(started + latency - t0), len(answered) - 1)] = True
    return int((~answered[: int(t1 - t0)]).sum())


def longest_gap(probes: list[tuple[float, float, int]]) -> float:
    """The longest time between two answers to the probe."""
    answers = sorted(started + latency for started, latency, status in probes if status)
    return max(np.diff(answers), default=0.0) if len(answers) > 1 else float("nan")


@contextlib.contextmanager
def identity(oidc: bool) -> Iterator[tuple[dict[str, str], str | None]]:
    """No auth (the loopback demo), or the shipped mode, OIDC, with the tests' identity provider."""
    if not oidc:
        yield {}, None
        return
    from tests.auth.cases import ALICE, AUDIENCE, service_auth
    from tests.auth.idp import IdentityProvider

    with IdentityProvider.running() as idp:
        token = idp.mint(ALICE, AUDIENCE, lifetime_s=24 * 3600)
        yield {"TFAAS_AUTH": json.dumps(service_auth(idp))}, token


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    built, _ = build_model(workdir / "built")
    # A model in the caller's namespace, which only its owner may republish: the demo user is "local".
    model = "alice.mlp42" if args.oidc else "local.mlp42"
    bundle = workdir / "models" / model / "1"
    shutil.copytree(built, bundle)
    params = json.loads((bundle / "params.json").read_text())
    (bundle / "params.json").write_text(json.dumps({**params, "name": model}))
    tar = bundle_tar(bundle, model)
    body = workdir / "single.json"
    body.write_text(
        json.dumps({"keys": [f"f{i}" for i in range(DIM)], "values": [0.5] * DIM, "model": model})
    )
    script = workdir / "slice.lua"
    script.write_text(SLICE_LUA)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "tfaas",
        "--model-dir",
        str(workdir / "models"),
        "--port",
        str(port),
        "--workers",
        str(args.workers),
    ]
    with identity(args.oidc) as (auth_env, token):
        env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **auth_env}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if args.oidc:
            env["TFAAS_AUTH"] = auth_env["TFAAS_AUTH"]
        with serving(argv, port, workdir / "tfaas.log", "/v2/health/ready", env):
            for _ in range(5):  # warm up: every worker loaded and its caches warm
                wrk_slice(f"{url}/json", body, script, args.clients, token)
            stop = threading.Event()
            samples, threads = side_threads(url, port, tar, model, args, headers, stop)
            for thread in threads:
                thread.start()
            slices: list[Slice] = []
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < args.minutes * 60:
                    slices.append(wrk_slice(f"{url}/json", body, script, args.clients, token))
            finally:
                t1 = time.monotonic()
                stop.set()
                for thread in threads:
                    thread.join(150)
    return summarise(args, slices, samples, t0, t1)


def summarise(args: argparse.Namespace, slices: list[Slice], samples: Samples, t0: float, t1: float) -> dict:
    reload = [s for s in slices if in_reload(s.started, s.ended, samples.uploads)]
    rest = [s for s in slices if not in_reload(s.started, s.ended, samples.uploads)]
    probes_reload = [p for p in samples.probes if in_reload(p[0], p[0] + p[1], samples.uploads)]
    probes_rest = [p for p in samples.probes if not in_reload(p[0], p[0] + p[1], samples.uploads)]

    def group(group_slices: list[Slice], probes: list) -> dict[str, Any]:
        seconds = sum(s.ended - s.started for s in group_slices)
        return {
            "slices": len(group_slices),
            "requests": sum(s.requests for s in group_slices),
            "rps": sum(s.requests for s in group_slices) / seconds if seconds else float("nan"),
            "p50_ms": merged_quantile(group_slices, 50),
            "p99_ms": merged_quantile(group_slices, 99),
            "max_ms_wrk": max((s.max_us for s in group_slices), default=0) / 1000,
            "max_ms_probe": max((p[1] for p in probes), default=float("nan")) * 1000,
            "probe_p99_ms": float(np.percentile([p[1] for p in probes], 99) * 1000)
            if probes
            else float("nan"),
        }

    rss = samples.rss
    # The first samples are taken once the server is warm: growth is from there to the end of the run.
    rss_start = float(np.median([r[1] for r in rss[:5]])) if rss else float("nan")
    rss_end = float(np.median([r[1] for r in rss[-5:]])) if rss else float("nan")
    loads = [value for _, value in samples.load]
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "workers": args.workers,
        "republish_s": args.republish_s,
        "oidc": args.oidc,
        "duration_s": t1 - t0,
        "slice_time_s": sum(s.ended - s.started for s in slices),
        "uploads": len(samples.uploads),
        "upload_statuses": sorted({u[2] for u in samples.uploads}),
        "upload_errors": samples.upload_errors[:3],
        "upload_max_s": max((u[1] - u[0] for u in samples.uploads), default=float("nan")),
        "non2xx": sum(s.non2xx for s in slices) + sum(1 for p in samples.probes if p[2] and p[2] >= 300),
        "socket_errors": sum(s.errors for s in slices) + sum(1 for p in samples.probes if not p[2]),
        "silent_seconds": silent_seconds(samples.probes, slices, t0, t1),
        "slices_without_answers": sum(1 for s in slices if not s.requests),
        "probe_longest_gap_s": longest_gap(samples.probes),
        "reload": group(reload, probes_reload),
        "rest": group(rest, probes_rest),
        "rss_start_mb": rss_start / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "rss_growth": rss_end / rss_start - 1 if rss else float("nan"),
        "rss_workers_seen": sorted({r[2] for r in rss}),
        "load_min": min(loads, default=float("nan")),
        "load_median": float(np.median(loads)) if loads else float("nan"),
        "load_max": max(loads, default=float("nan")),
        "load_series": [round(v, 2) for v in loads[:: max(1, len(loads) // 30)]],
    }


def report(result: dict[str, Any]) -> str:
    r, reload, rest = result, result["reload"], result["rest"]
    p99_ratio = reload["p99_ms"] / rest["p99_ms"]
    uploads_ok = r["upload_statuses"] == [201]
    checks = [
        ("every republish accepted", uploads_ok, f"{r['uploads']} uploads, statuses {r['upload_statuses']}"),
        (
            "0 non-2xx",
            r["non2xx"] == 0 and r["socket_errors"] == 0,
            f"{r['non2xx']} non-2xx, {r['socket_errors']} socket errors",
        ),
        (
            "0 silent seconds",
            r["silent_seconds"] == 0,
            f"{r['silent_seconds']} (longest probe gap {r['probe_longest_gap_s'] * 1000:.0f} ms)",
        ),
        (
            "p99 during reloads <= 2x the rest",
            p99_ratio <= 2,
            f"{reload['p99_ms']:.1f} ms vs {rest['p99_ms']:.1f} ms: {p99_ratio:.2f}x",
        ),
        (
            "worker RSS growth < 10%",
            r["rss_growth"] < 0.10,
            f"{r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB: {r['rss_growth'] * 100:+.1f}%",
        ),
    ]
    lines = [
        "# TFaaS soak",
        "",
        f"`python bench/soak.py --minutes {r['minutes']} --clients {r['clients']} --republish-s "
        f"{r['republish_s']} --workers {r['workers']}{' --oidc' if r['oidc'] else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} CPUs.",
        "",
        f"{r['clients']} wrk clients on single-row `/json` in 1 s slices for {r['duration_s']:.0f} s "
        f"({r['slice_time_s'] / r['duration_s'] * 100:.1f}% of the time inside a slice), while the model "
        f"the benchmark MLP was uploaded again every {r['republish_s']} s through `POST /upload` ({r['uploads']} uploads, "
        f"statuses {r['upload_statuses']}, the longest took {r['upload_max_s']:.2f} s). Auth: "
        f"{'OIDC (bearer tokens of the test identity provider)' if r['oidc'] else 'loopback demo'}.",
        "",
        "| check (issue #14) | met | measured |",
        "| --- | --- | --- |",
        *[f"| {name} | {'yes' if ok else '**no**'} | {text} |" for name, ok, text in checks],
        "",
        "| | during reloads | the rest |",
        "| --- | --- | --- |",
        f"| slices | {reload['slices']} | {rest['slices']} |",
        f"| requests/s | {reload['rps']:.0f} | {rest['rps']:.0f} |",
        f"| p50 (wrk) | {reload['p50_ms']:.2f} ms | {rest['p50_ms']:.2f} ms |",
        f"| p99 (wrk) | {reload['p99_ms']:.2f} ms | {rest['p99_ms']:.2f} ms |",
        f"| max (wrk, requests that ended within their slice) | {reload['max_ms_wrk']:.1f} ms | "
        f"{rest['max_ms_wrk']:.1f} ms |",
        f"| probe p99 / max (every request, one at a time) | {reload['probe_p99_ms']:.1f} / "
        f"{reload['max_ms_probe']:.1f} ms | {rest['probe_p99_ms']:.1f} / {rest['max_ms_probe']:.1f} ms |",
        "",
        f"Slices with no answer: {r['slices_without_answers']}. Workers seen by the RSS sampler: "
        f"{r['rss_workers_seen']} (a worker replaced during the run would show here).",
        "",
        f"Load average (1 min), sampled every second: min {r['load_min']:.2f}, median {r['load_median']:.2f}, "
        f"max {r['load_max']:.2f}; series (every ~{max(1, round(r['duration_s'] / 30))} s): "
        f"{r['load_series']}.",
        "",
        "Method: wrk in consecutive 1 s slices (each slice opens its connections anew); a reload window runs "
        f"from an upload's start to {RELOAD_TAIL_S:.0f} s after its answer; p99 over a group merges the slices' "
        "quantiles (1..99, 99.5, 99.9) weighted by their request counts. A silent second is a whole second "
        "of the run in which neither a wrk slice nor the probe got an answer. RSS is the sum over the "
        "workers, the median of the first 5 samples against the median of the last 5.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--republish-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--oidc", action="store_true", help="auth mode oidc, as the roles ship it")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfaas-soak-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result, indent=1))
    args.output.write_text(report(result))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
