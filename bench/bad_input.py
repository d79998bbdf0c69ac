"""Bad input against both services: each refused within 1 s with a 4xx, the workers' peak RSS under a bound.

One piece although above 400 lines: the raw HTTP client, the hostile bodies, the RSS sampler and the two
services' runs share one report, and a benchmark is read top to bottom.

Both services run as deployed: under gunicorn, with ``auth.mode: oidc`` against the tests' identity provider
(tests/auth/idp.py, the one double the project allows), every request carrying alice's token. Each case is
sent once with a raw socket client: the time is from the first byte sent to the answer's status line, while
the client may still be sending (a service that refuses a 50 MB body on its length need not read it). Cases:

- a 50 MB JSON body sent with a ``Content-Length``, and the same sent chunked (``/json``; ``POST /jobs``);
- JSON nested 100,000 levels deep;
- a numeric query parameter far out of range (the API's log ``offset``; TFaaS's ``version``);
- 16 log followers of one queued job at once (the API), with ``/health`` asked every 100 ms meanwhile;
- tar bombs: 20,000 members; one member declaring 1.1 GiB of zeros; 1.1 GiB of zeros in 1 MiB members;
- an upload declaring more than the upload limit; an upload above the disk quota (the API, in a second run
  with a 20 MiB quota so that the case is quick; the first keeps the default quota, which would otherwise
  stop the tar bombs before the API's own unpack limits do).

The RSS of every gunicorn worker is sampled every 20 ms during each case (and of their children, reported
apart: TFaaS's upload-check processes). Bounds (docs/tfaas.md and docs/server.md): a refusal within 1 s,
and a worker's peak RSS no more than ``RSS_GROWTH_BOUND`` above its RSS before the first case.

usage: python bench/bad_input.py
Writes bench/results/bad_input.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
# bench/ (first on the path) holds a package named tfaas, the floor's app: look it up after the installed
# TFaaS; the checkout's root gives tests.auth, the identity provider.
sys.path.append(sys.path.pop(0))
sys.path.append(str(ROOT))
from tfaas_bench import DIM, build_model, free_port, serving  # noqa: E402

from mlaas4hep_devtools.processes import stop, wait_for_port  # noqa: E402

REFUSAL_BOUND_S = 1.0
RSS_GROWTH_BOUND = 256 * 2**20  # bytes above a worker's RSS before the first case
BIG = 50 * 10**6
DEPTH = 100_000
MiB = 2**20
BOMB_BYTES = 1100 * MiB
FOLLOWERS = 16
SAMPLE_S = 0.02


# -- a raw HTTP client that reads the answer while it is still sending --------------------------------------


@dataclass
class Outcome:
    status: int | None
    seconds: float
    sent: int
    error: str | None = None
    body: str = ""


def exchange(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Iterable[bytes] = (),
    length: int | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """One request on a new connection; ``length`` None sends ``body`` chunked. Stops sending at the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    framing = {"Transfer-Encoding": "chunked"} if length is None else {"Content-Length": str(length)}
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in {**headers, **framing}.items()]
    answered = threading.Event()
    sent = [0]

    def send() -> None:
        with contextlib.suppress(OSError):
            for piece in body:
                if answered.is_set():
                    return
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if length is None else piece)
                sent[0] += len(piece)
            if length is None:
                sock.sendall(b"0\r\n\r\n")

    started = time.perf_counter()
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        seconds = time.perf_counter() - started
        answered.set()
        try:
            text = response.read(4096).decode(errors="replace")
        except OSError:
            text = ""
        return Outcome(response.status, seconds, sent[0], body=text[:300])
    except (OSError, http.client.HTTPException) as err:
        answered.set()
        return Outcome(None, time.perf_counter() - started, sent[0], error=f"{type(err).__name__}: {err}")
    finally:
        answered.set()
        sock.close()
        sender.join(5)


# -- hostile bodies -----------------------------------------------------------------------------------------


def big_json(size: int, prefix: bytes) -> Iterator[bytes]:
    """A valid JSON object of ``size`` bytes: ``prefix`` then a long list of numbers, in 64 KiB pieces."""
    yield prefix
    sent = len(prefix)
    piece = b"0.5, " * 13107
    while sent + len(piece) + 2 < size:
        yield piece
        sent += len(piece)
    yield b"0]}"


def nested(depth: int, prefix: bytes) -> bytes:
    return prefix + b"[" * depth + b"]" * depth + b"}"


def tar_gz(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w|") as tar,
    ):
        build(tar)
    return buffer.getvalue()


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def bombs(top: str) -> dict[str, bytes]:
    """The tar bombs, each with its files under ``top``/."""

    def members(tar: tarfile.TarFile) -> None:
        for i in range(20_000):
            tar.addfile(tarfile.TarInfo(f"{top}/f{i}"), io.BytesIO())

    def one_huge(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(f"{top}/zeros")
        info.size = BOMB_BYTES
        tar.addfile(info, Zeros(BOMB_BYTES))

    def many_megabytes(tar: tarfile.TarFile) -> None:
        for i in range(BOMB_BYTES // MiB):
            info = tarfile.TarInfo(f"{top}/zeros{i}")
            info.size = MiB
            tar.addfile(info, Zeros(MiB))

    return {
        "tar bomb: 20,000 members": tar_gz(members),
        "tar bomb: one member of 1.1 GiB of zeros": tar_gz(one_huge),
        "tar bomb: 1.1 GiB of zeros in 1 MiB members": tar_gz(many_megabytes),
    }


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def endless(total: int) -> Iterator[bytes]:
    """``total`` bytes of zeros, never held in memory at once."""
    piece = bytes(64 * 1024)
    for _ in range(total // len(piece)):
        yield piece


# -- RSS ----------------------------------------------------------------------------------------------------


@dataclass
class RssSampler:
    master: int
    peaks: dict[int, int] = field(default_factory=dict)  # worker pid -> peak RSS
    children_peak: int = 0  # the largest RSS of a worker's child (TFaaS: upload checks)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.master).children()

    def sample(self) -> None:
        for worker in self.workers():
            with contextlib.suppress(psutil.Error):
                rss = worker.memory_info().rss
                self.peaks[worker.pid] = max(self.peaks.get(worker.pid, 0), rss)
                for child in worker.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.children_peak = max(self.children_peak, child.memory_info().rss)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.peaks, self.children_peak = {}, 0
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(SAMPLE_S):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self.sample()
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join(5)
            self.sample()


def baseline_rss(master: int) -> dict[int, int]:
    return {w.pid: w.memory_info().rss for w in psutil.Process(master).children()}


# -- the services -------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    run: Callable[[], Outcome | list[Outcome]]
    wanted: str  # the statuses that count as refused, e.g. "413" or "4xx"
    extra: dict[str, Any] = field(default_factory=dict)


def measure(service: str, master: int, cases: list[Case]) -> list[dict[str, Any]]:
    before = baseline_rss(master)
    sampler = RssSampler(master)
    rows = []
    for case in cases:
        load = os.getloadavg()[0]
        with sampler.running():
            outcome = case.run()
        outcomes = outcome if isinstance(outcome, list) else [outcome]
        refusals = [o for o in outcomes if _status_ok(o.status, case.wanted)]
        growth = max((peak - before.get(pid, peak) for pid, peak in sampler.peaks.items()), default=0)
        rows.append(
            {
                "service": service,
                "case": case.name,
                "statuses": sorted({str(o.status or o.error) for o in outcomes}),
                "seconds": max(o.seconds for o in (refusals or outcomes)),
                "refused": bool(refusals),
                "all_refused": len(refusals) == len(outcomes),
                "sent_mb": max(o.sent for o in outcomes) / 1e6,
                "peak_rss_mb": max(sampler.peaks.values(), default=0) / MiB,
                "growth_mb": growth / MiB,
                "children_peak_mb": sampler.children_peak / MiB,
                "load": load,
                "wanted": case.wanted,
                "example": (refusals or outcomes)[0].body or (refusals or outcomes)[0].error,
                **case.extra,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _status_ok(status: int | None, wanted: str) -> bool:
    return status is not None and (
        str(status) in wanted.split("/") or (wanted == "4xx" and 400 <= status < 500)
    )


def json_body_cases(port: int, path: str, headers: dict[str, str], prefix: bytes) -> list[Case]:
    """The JSON bodies both services must refuse: 50 MB with a length and chunked (413), 100k deep (400)."""
    deep = nested(DEPTH, prefix[:-1])
    return [
        Case("50 MB JSON body with a length", lambda: exchange(port, "POST", path, headers, big_json(BIG, prefix), BIG), "413"),
        Case("50 MB JSON body, chunked", lambda: exchange(port, "POST", path, headers, big_json(BIG, prefix)), "413"),
        Case("JSON nested 100,000 deep", lambda: exchange(port, "POST", path, headers, [deep], len(deep)), "400"),
    ]  # fmt: skip


def tfaas_cases(port: int, token: str, model: str, bomb_bodies: dict[str, bytes], limit: int) -> list[Case]:
    auth = {"Authorization": f"Bearer {token}"}
    as_json = {**auth, "Content-Type": "application/json"}
    prefix = b'{"model": "%s", "values": [' % model.encode()
    tar = {**auth, "Content-Type": "application/gzip"}
    cases = [
        *json_body_cases(port, "/json", as_json, prefix),
        Case(
            "numeric query parameter out of range (`version=2**61+1`)",
            lambda: exchange(port, "GET", f"/params/{model}?version=2305843009213693953", auth),
            "400/404",
        ),
    ]  # fmt: skip
    for name, data in bomb_bodies.items():
        cases.append(
            Case(
                name,
                lambda data=data: exchange(
                    port, "POST", f"/upload?name={model}", tar, pieces(data), len(data)
                ),
                "400/413",
                {"body_kb": len(data) / 1024},
            )
        )
    cases.append(
        Case(
            f"upload declaring {limit // MiB + 1} MiB (limit {limit // MiB} MiB)",
            lambda: exchange(port, "POST", f"/upload?name={model}", tar, endless(limit + MiB), limit + MiB),
            "413",
        )
    )
    return cases


def api_cases(
    url: str, port: int, token: str, job: str, bomb_bodies: dict[str, bytes], limit: int, quota: int | None
) -> list[Case]:
    auth = {"Authorization": f"Bearer {token}"}
    as_json = {**auth, "Content-Type": "application/json"}
    prefix = b'{"name": "bad", "files": ['
    tar = {**auth, "Content-Type": "application/gzip"}

    def followers() -> list[Outcome]:
        health: list[float] = []
        done = threading.Event()

        def ask_health() -> None:
            while not done.wait(0.1):
                started = time.perf_counter()
                try:
                    requests.get(f"{url}/health", timeout=30)
                    health.append(time.perf_counter() - started)
                except requests.RequestException:
                    health.append(float("inf"))

        prober = threading.Thread(target=ask_health, daemon=True)
        prober.start()
        outcomes: list[Outcome] = []
        lock = threading.Lock()

        def follow() -> None:
            # follow_s=5: an accepted follower holds its thread 5 s, then gives it back.
            outcome = exchange(port, "GET", f"/jobs/{job}/logs?follow=true&follow_s=5", auth, timeout=30)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=follow) for _ in range(FOLLOWERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        time.sleep(0.5)
        done.set()
        prober.join(5)
        case_extra["health_max_s"] = max(health, default=float("nan"))
        case_extra["health_answers"] = len(health)
        case_extra["accepted"] = sum(1 for o in outcomes if o.status == 200)
        return [o for o in outcomes if o.status != 200] or outcomes

    case_extra: dict[str, Any] = {}
    cases = [
        *json_body_cases(port, "/jobs", as_json, prefix),
        Case(
            "log `offset` out of range (2**61+1)",
            lambda: exchange(port, "GET", f"/jobs/{job}/logs?offset=2305843009213693953", auth),
            "400",
        ),
        Case(f"{FOLLOWERS} log followers of one job at once", followers, "429", case_extra),
    ]  # fmt: skip
    for name, data in bomb_bodies.items():
        cases.append(
            Case(name, lambda data=data: exchange(port, "POST", "/upload", tar, pieces(data), len(data)), "400/413/507",
                 {"body_kb": len(data) / 1024})
        )  # fmt: skip
    cases.append(
        Case(
            f"upload declaring {limit // MiB + 1} MiB (limit {limit // MiB} MiB)",
            lambda: exchange(port, "POST", "/upload", tar, endless(limit + MiB), limit + MiB),
            "413",
        )
    )
    if quota is None:
        return cases
    over_quota = tar_gz(lambda t: _add_random(t, "data.bin", quota + MiB))
    return [
        Case(
            f"upload above the disk quota ({(quota + MiB) // MiB} MiB of data, quota {quota // MiB} MiB)",
            lambda: exchange(port, "POST", "/upload", tar, pieces(over_quota), len(over_quota)),
            "507",
        )
    ]


def _add_random(tar: tarfile.TarFile, name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    tar.addfile(info, io.BytesIO(os.urandom(size)))


@contextlib.contextmanager
def identity() -> Iterator[tuple[dict[str, Any], str]]:
    from tests.auth.cases import ALICE, AUDIENCE, service_auth
    from tests.auth.idp import IdentityProvider

    with IdentityProvider.running() as idp:
        yield service_auth(idp), idp.mint(ALICE, AUDIENCE, lifetime_s=24 * 3600)


def run_tfaas(workdir: Path, auth: dict[str, Any], token: str, bomb_bodies: dict[str, bytes]) -> list[dict]:
    built, _ = build_model(workdir / "built")
    model = "alice.mlp42"
    bundle = workdir / "models" / model / "1"
    shutil.copytree(built, bundle)
    params = json.loads((bundle / "params.json").read_text())
    (bundle / "params.json").write_text(json.dumps({**params, "name": model}))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tfaas",
        "--model-dir",
        str(workdir / "models"),
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TFAAS_AUTH": json.dumps(auth)}
    from tfaas.settings import Settings

    limit = Settings(model_dir=workdir).max_upload_bytes
    with serving(argv, port, workdir / "tfaas.log", "/v2/health/ready", env):
        headers = {"Authorization": f"Bearer {token}"}
        ok = requests.post(f"http://127.0.0.1:{port}/json", json={"model": model, "values": [0.5] * DIM},
                           headers=headers, timeout=60)  # fmt: skip
        ok.raise_for_status()
        master = psutil.Process(
            requests.get(f"http://127.0.0.1:{port}/status", timeout=30).json()["pid"]
        ).ppid()
        return measure("TFaaS", master, tfaas_cases(port, token, model, bomb_bodies, limit))


def run_api(
    workdir: Path, auth: dict[str, Any], token: str, bomb_bodies: dict[str, bytes], quota: int | None
) -> list[dict]:
    """The API with its default disk quota (``quota`` None: every case but the quota's), or with ``quota``
    (the quota case only: a small quota makes it quick, and would hide the other limits behind it)."""
    data_dir = Path(tempfile.mkdtemp(prefix="mlaas4hep-bad-input-"))
    data_dir.chmod(0o755)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Only this run's settings: the API refuses MLAAS4HEP_* variables it does not know (MLAAS4HEP_VENV).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLAAS4HEP_")}
    env = {
        **inherited,
        "MLAAS4HEP_DATA_DIR": str(data_dir),
        "MLAAS4HEP_JOB_UIDS": "61080-61089",
        "MLAAS4HEP_JOB_NETWORK": "host",
        "MLAAS4HEP_CHECK_URLS": "false",  # no worker runs: the job stays queued, which followers wait on
        "MLAAS4HEP_WORKERS": "2",
        "MLAAS4HEP_AUTH": json.dumps(auth),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if quota is not None:
        env["MLAAS4HEP_DISK_QUOTA_BYTES"] = str(quota)
    from appliance.server.settings import Settings

    limit = Settings.load(environ=env).max_upload_bytes
    argv = [sys.executable, "-m", "appliance", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    with (data_dir / "api.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_for_port(port, proc, 120, data_dir / "api.log")
        headers = {"Authorization": f"Bearer {token}"}
        body = {"name": "bad", "files": ["root://127.0.0.1:1/s.root", "root://127.0.0.1:1/b.root"], "labels": [1, 0],
                "model": {"layers": [{"type": "Dense", "units": 1, "activation": "sigmoid"}]}}  # fmt: skip
        submitted = requests.post(f"{url}/jobs", json=body, headers=headers, timeout=60)
        submitted.raise_for_status()
        job = submitted.json()["id"]
        return measure("MLaaS4HEP API", proc.pid, api_cases(url, port, token, job, bomb_bodies, limit, quota))
    finally:
        stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


# -- the report ---------------------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], elapsed: float, loads: list[float]) -> str:
    lines = [
        "# Bad input: refused within 1 s, workers' memory bounded",
        "",
        f"`bench/bad_input.py`, {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}, {os.cpu_count()} CPUs. "
        "Both services under gunicorn (2 workers), `auth.mode: oidc` against the tests' identity provider, every "
        "request with alice's token; one raw-socket request per case, timed from its first byte to the answer's "
        "status line (the client keeps sending meanwhile, unless answered). Peak RSS: the largest of the gunicorn "
        "workers, sampled every 20 ms during the case; growth: above that worker's RSS before the first case. "
        f"Bounds: refused with the 4xx shown within {REFUSAL_BOUND_S:g} s; growth at most "
        f"{RSS_GROWTH_BOUND // MiB} MiB. Load average (1 min) at each case's start: min {min(loads):.2f}, "
        f"max {max(loads):.2f} ({elapsed:.0f} s in all).",
        "",
        "| service | case | answer | wanted | seconds | MB sent | peak worker RSS MiB | growth MiB | met |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    failures = []
    for row in rows:
        met = (
            row["refused"]
            and row["seconds"] <= REFUSAL_BOUND_S
            and row["growth_mb"] * MiB <= RSS_GROWTH_BOUND
        )
        if not met:
            failures.append(f"{row['service']}: {row['case']}")
        lines.append(
            f"| {row['service']} | {row['case']} | {', '.join(row['statuses'])} | {row['wanted']} | "
            f"{row['seconds']:.3f} | {row['sent_mb']:.1f} | {row['peak_rss_mb']:,.0f} | {row['growth_mb']:+,.0f} | "
            f"{'yes' if met else '**no**'} |"
        )
    notes = []
    for row in rows:
        if "health_max_s" in row:
            notes.append(
                f"- {row['service']}, {FOLLOWERS} followers: {row['accepted']} accepted (each held 5 s, "
                f"`follow_s=5`), the rest refused; `/health` answered {row['health_answers']} times meanwhile, "
                f"the slowest in {row['health_max_s']:.3f} s (bound 1 s: "
                f"{'met' if row['health_max_s'] <= 1 else '**not met**'})."
            )
        if row["children_peak_mb"]:
            notes.append(
                f"- {row['service']}, {row['case']}: a worker's child process (the upload check) peaked at "
                f"{row['children_peak_mb']:,.0f} MiB RSS; it exits after the check."
            )
        if "body_kb" in row:
            notes.append(
                f"- {row['service']}, {row['case']}: the archive is {row['body_kb']:,.0f} KiB gzipped."
            )
    lines += ["", *notes, "", "Answers (first 300 characters):", ""]
    lines += [f"- {row['service']}, {row['case']}: `{(row['example'] or '').strip()[:300]}`" for row in rows]
    lines += [
        "",
        f"All cases met their bounds: {'yes' if not failures else '**no**: ' + '; '.join(failures)}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quota-mib", type=int, default=20, help="the API's disk quota during the run")
    parser.add_argument("--only", choices=("tfaas", "api"), help="run one service only")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "bad_input.md")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bad-input-"))
    started = time.time()
    rows: list[dict[str, Any]] = []
    try:
        bomb_bodies = bombs("alice.mlp42")
        with identity() as (auth, token):
            if args.only in (None, "tfaas"):
                rows += run_tfaas(workdir, auth, token, bomb_bodies)
            if args.only in (None, "api"):
                rows += run_api(workdir, auth, token, bomb_bodies, None)
                rows += run_api(workdir, auth, token, bomb_bodies, args.quota_mib * MiB)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(rows, time.time() - started, [row["load"] for row in rows]))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
