"""Scaling bench (issue #15): jobs per minute on one training worker against two, and publish-to-served time.

One piece although above 400 lines: both parts share the servers of one run (redis-server, PostgreSQL, the
API, the XRootD site, the identity provider, the replica) and the one report, which is read top to bottom.

Real parts on 127.0.0.1, as tests/scaling starts them (their helpers are reused): Debian's redis-server (the
queue) and PostgreSQL 15 (the job store), ``python -m appliance serve`` (the front's API) and
``python -m appliance worker`` processes, each with its own data directory and the API's job directories linked
in (the NFS mount between machines), jobs reading through a loopback XRootD proxy, and a TFaaS replica
(``python -m tfaas``) with its own model directory under OIDC auth with the test identity provider.

1. Jobs per minute: ``--jobs`` tiny training jobs (1 epoch) are submitted at once; the time from the first
   submission to the last job's finish, with one worker process and with two (``max_concurrent_jobs`` 1 each),
   in interleaved rounds (1w, 2w, 1w, 2w, ...); medians and the ratio 2w/1w. The load average is sampled
   every second of each round.
2. Publish to served: a worker with ``tfaas_replicas`` and the ``delivery_*`` settings delivers each job's model
   to the replica; from the publish (the store's delivery row, stamped when the version was handed out) to the
   first successful prediction of that version from the replica (``/v1/models/NAME/versions/V:predict``,
   polled every 20 ms), in parts. The baseline of the same round: the same bundle uploaded by a client with
   ``POST /upload`` and polled the same way, so the ratio is the delivery's own overhead.

Two rounds of each set-up by default, not three: a one-worker round of 20 jobs takes 4-5 minutes on the
shared 2-core machine, and two rounds of the three set-ups already take about 25 minutes with part 2. The rounds go 1w, 2w, 2w, 1w (and so
on), so that a drift in the machine's other load weighs on both counts alike.

usage: python bench/scaling_bench.py [--jobs 20] [--rounds 2] [--served 5]
Writes bench/results/scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # the tests' server helpers; installed packages still come first

from appliance.data.synthetic import write_sample_pair  # noqa: E402
from appliance.server.delivery import LEASE_S  # noqa: E402
from appliance.server.store import DELIVERED, FINISHED_STATES, JobStore  # noqa: E402
from servicecore import atomic  # noqa: E402
from servicecore.safetar import extract_archive  # noqa: E402
from tests.auth.idp import IdentityProvider, User  # noqa: E402
from tests.scaling.servers import postgres_server, redis_server, tfaas_replica  # noqa: E402
from tests.server.conftest import TINY_MODEL, TINY_PARAMS, api_process, wait_until, worker_process  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from tests.support.xrootd import xrootd_site  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ALICE_HEADER = {"X-Forwarded-User": "alice"}
ALICE = User("alice-sub", "alice")
SERVICE = User("svc-mlaas4hep-workers", "mlaas4hep-publisher")
SECRET = "scaling-bench-worker-secret"
AUDIENCE = "tfaas-client"
POLL_S = 0.02
# The worker set-ups of part 1: (worker processes, each pinned to a core of its own).
MODES = {"1w": (1, False), "2w": (2, False), "2w, a core each": (2, True)}


# -- the shared servers ------------------------------------------------------------------------------------


def private_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the job user reaches its job directory
    return path


@contextlib.contextmanager
def workers(
    api_data: Path, count: int, reach: str, logs: Path, settings: dict[str, Any], own_core: bool = False
) -> Iterator[list[int]]:
    """``count`` worker processes, each a machine of its own: own data directory and models, the API's job
    directories linked in; ready once each consumes the queue. With ``own_core``, worker n and every thread
    of it run on core n only, as each worker VM has cores of its own; yields their pids."""
    with contextlib.ExitStack() as stack:
        pids = []
        for n in range(count):
            own = private_dir(f"mlaas4hep-scaling-w{n}-")
            stack.callback(shutil.rmtree, own, ignore_errors=True)
            (own / "jobs").symlink_to(api_data / "jobs")
            proc = stack.enter_context(worker_process(own, logs / f"w{n}.log", reach, **settings))
            if own_core:  # every thread: the job's launcher runs on a thread that exists already
                for thread in psutil.Process(proc.pid).threads():
                    os.sched_setaffinity(thread.id, {n % os.cpu_count()})
            pids.append(proc.pid)
        yield pids


def listeners(port: int) -> list[int]:
    """The processes listening on ``port`` that are not children of another one of them (gunicorn's
    workers share their master's socket)."""
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
    return [pid for pid in pids if psutil.Process(pid).ppid() not in pids]


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes, their live descendants and every child they reaped."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
    return total


def port_of(url: str) -> int:
    return int(urlsplit(url).port or 0)


def workflow(files: list[str], name: str) -> dict[str, Any]:
    return {"name": name, "files": files, "labels": [1, 0], "model": TINY_MODEL, "params": TINY_PARAMS}


def submit(url: str, body: dict[str, Any]) -> str:
    answer = requests.post(f"{url}/jobs", json=body, headers=ALICE_HEADER, timeout=120)
    if answer.status_code != 201:
        raise RuntimeError(f"submission refused ({answer.status_code}): {answer.text[:500]}")
    return answer.json()["id"]


def live_workers(url: str) -> int:
    return requests.get(f"{url}/health", timeout=30).json()["live_workers"]


class LoadSampler:
    """The 1-minute load average, every second, while the block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- 1. jobs per minute ------------------------------------------------------------------------------------


def throughput_round(
    url: str, store: JobStore, files: list[str], mode: str, jobs: int, tag: str, env: dict[str, Any]
) -> dict[str, Any]:
    """``jobs`` submitted at once to the workers of ``mode``; the time from the first submission to the last
    finish, and the CPU time each part of the run spent on them."""
    count, own_core = MODES[mode]
    with workers(env["api_data"], count, files[0], env["logs"], env["shared"], own_core) as pids:
        wait_until(lambda: live_workers(url) == count, 60)
        front = {part: listeners(port) for part, port in env["front_ports"].items()}
        cpu_before = {part: tree_cpu(p) for part, p in {**front, "workers": pids}.items()}
        with LoadSampler() as load:
            started = time.time()
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda n: submit(url, workflow(files, f"{tag}j{n}")), range(jobs)))
            submitted = time.time()
            done: dict[str, Any] = {}

            def all_done() -> bool:  # one query a second: the bench's own polls load the store little
                for record in store.list(owner="alice", limit=len(ids)):  # the newest: this round's
                    if record.id in ids and record.state in FINISHED_STATES:
                        done[record.id] = record
                return len(done) == len(ids)

            wait_until(all_done, 3600, 1.0)
        cpu = {part: tree_cpu(p) - cpu_before[part] for part, p in {**front, "workers": pids}.items()}
    records = list(done.values())
    failed = [f"{r.id}: {r.state} {r.error}" for r in records if r.state != "succeeded"]
    makespan = max(r.finished for r in records) - started
    return {
        "mode": mode,
        "workers": count,
        "cpu_per_job_s": {part: seconds / len(records) for part, seconds in cpu.items()},
        "makespan_s": makespan,
        "jobs_per_min": 60 * len(records) / makespan,
        "submit_s": submitted - started,
        "job_run_s": statistics.median(r.finished - r.started for r in records),
        "queue_wait_s": statistics.median(r.started - r.created for r in records),
        "per_worker": sorted(sum(1 for r in records if r.worker == w) for w in {r.worker for r in records}),
        "failed": failed,
        "load": load.samples,
    }


# -- 2. publish to served ----------------------------------------------------------------------------------


def serves(replica: str, model: str, version: int, dim: int, headers: dict[str, str]) -> bool:
    answer = requests.post(
        f"{replica}/v1/models/{model}/versions/{version}:predict",
        json={"instances": [[0.0] * dim]},
        headers=headers,
        timeout=30,
    )
    return answer.status_code == 200 and "predictions" in answer.json()


def first_served(replica: str, model: str, version: int, dim: int, headers: dict[str, str]) -> float:
    deadline = time.monotonic() + 300
    while not serves(replica, model, version, dim, headers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model} version {version} never served by {replica}")
        time.sleep(POLL_S)
    return time.time()


def delivered_sample(
    url: str, store: JobStore, files: list[str], replica: str, headers: dict[str, str], dim: int
) -> dict[str, Any]:
    """One job's model, from the publish to the first prediction of its version from the replica."""
    job_id = submit(url, workflow(files, "served"))
    deadline = time.monotonic() + 600
    claimed = None
    while True:  # the store's own stamps: the publish (next_try of a first attempt), the claim, the answer
        rows = store.list_deliveries(job_id=job_id)
        if rows and claimed is None and rows[0].lease_until is not None:
            claimed = rows[0].lease_until - LEASE_S
        if (rows and rows[0].state != "pending") or time.monotonic() > deadline:
            break
        if not rows and (job := store.get(job_id)).state in FINISHED_STATES and job.state != "succeeded":
            raise RuntimeError(f"job {job_id} {job.state}: {job.error}")
        time.sleep(POLL_S)
    delivery = rows[0]
    if delivery.state != DELIVERED or delivery.attempts:
        raise RuntimeError(f"delivery {delivery} did not go through at the first attempt")
    served = first_served(replica, delivery.model, delivery.version, dim, headers)
    published = delivery.next_try
    return {
        "job": job_id,
        "archive": delivery.archive,
        "version": delivery.version,
        "claim_s": (claimed - published) if claimed else None,
        "upload_s": (delivery.delivered - claimed) if claimed else None,
        "answered_s": delivery.delivered - published,
        "after_answer_s": served - delivery.delivered,
        "total_s": served - published,
        "bytes": Path(delivery.archive).stat().st_size,
    }


def renamed(archive: str, name: str) -> bytes:
    """The job's bundle archive under another model name (its top folder and params.json's name): the client's
    copy must not take a version of the delivered model, or the store's numbers would go astray."""
    with tempfile.TemporaryDirectory() as tmp:
        extract_archive(archive, tmp)
        (top,) = Path(tmp).iterdir()
        params = json.loads((top / "params.json").read_text())
        (top / "params.json").write_text(json.dumps({**params, "name": name}))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(top, arcname=name)
        return buffer.getvalue()


def upload(replica: str, name: str, body: bytes, headers: dict[str, str]) -> int:
    answer = requests.post(
        f"{replica}/upload",
        params={"name": name},
        data=body,
        headers={**headers, "Content-Type": "application/gzip"},
        timeout=300,
    )
    if answer.status_code != 201:
        raise RuntimeError(f"upload of {name} refused ({answer.status_code}): {answer.text[:300]}")
    return answer.json()["version"]


def input_width(replica: str, archive: str, headers: dict[str, str]) -> int:
    """Uploads a finished job's bundle once (the replica's first install loads TensorFlow's kernels, a cost no
    later version pays) and reads the model's input width, which every job of the run shares."""
    version = upload(replica, "alice.warmup", renamed(archive, "alice.warmup"), headers)
    answer = requests.get(
        f"{replica}/v1/models/alice.warmup/versions/{version}/metadata", headers=headers, timeout=60
    )
    answer.raise_for_status()
    (signature,) = answer.json()["metadata"]["signature_def"]["signature_def"].values()
    (tensor,) = signature["inputs"].values()
    return int(tensor["tensor_shape"]["dim"][1]["size"])


def plain_sample(replica: str, archive: str, dim: int, headers: dict[str, str]) -> dict[str, Any]:
    """The baseline: the same bundle uploaded by a client (its owner), polled the same way."""
    body = renamed(archive, "alice.plain")
    started = time.time()
    version = upload(replica, "alice.plain", body, headers)
    answered = time.time()
    served = first_served(replica, "alice.plain", version, dim, headers)
    return {"upload_s": answered - started, "after_answer_s": served - answered, "total_s": served - started}


def served_part(
    url: str, store: JobStore, files: list[str], samples: int, env: dict[str, Any]
) -> dict[str, Any]:
    with IdentityProvider.running() as idp:
        idp.add_client("mlaas4hep-workers", SECRET, SERVICE)
        port = free_port()
        delivery = {
            "tfaas_replicas": f"http://127.0.0.1:{port}",
            "delivery_issuer": idp.issuer,
            "delivery_client_id": "mlaas4hep-workers",
            "delivery_client_secret": SECRET,
            "delivery_audience": AUDIENCE,
        }
        models = private_dir("mlaas4hep-scaling-replica-")
        headers = {"Authorization": f"Bearer {idp.mint(ALICE, AUDIENCE, lifetime_s=6 * 3600)}"}
        try:
            with (
                tfaas_replica(idp, models, port, env["logs"] / "replica.log", AUDIENCE, [SERVICE.sub]) as tf,
                workers(env["api_data"], 1, files[0], env["logs"], {**env["shared"], **delivery}),
                LoadSampler() as load,
            ):
                wait_until(lambda: live_workers(url) == 1, 60)
                dim = input_width(tf, str(next((env["api_data"] / "jobs").glob("*/model.tar.gz"))), headers)
                delivered, plain = [], []
                for n in range(samples):
                    delivered.append(delivered_sample(url, store, files, tf, headers, dim))
                    # The job tidies up after its publish: the plain upload starts once it has finished.
                    wait_until(lambda: store.get(delivered[-1]["job"]).state in FINISHED_STATES, 300, 0.2)
                    plain.append(plain_sample(tf, delivered[-1]["archive"], dim, headers))
                    print(f"served {n + 1}/{samples}: {delivered[-1]['total_s']:.2f} s delivered, "
                          f"{plain[-1]['total_s']:.2f} s plain", flush=True)  # fmt: skip
        finally:
            shutil.rmtree(models, ignore_errors=True)
    return {"delivered": delivered, "plain": plain, "load": load.samples}


# -- the run and its report --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = private_dir("mlaas4hep-scaling-")
    api_data = base / "api"
    api_data.mkdir()
    api_data.chmod(0o755)
    logs = base / "logs"
    logs.mkdir()
    try:
        with (
            redis_server() as queue_url,
            postgres_server() as store_url,
            xrootd_site() as site,
        ):
            files = [
                site.proxy_url(site.add_file(path, f"scaling/{path.name}"))
                for path in write_sample_pair(base).values()
            ]
            # Deployment's heartbeat (5 s), not the tests' 1 s: the store's per-worker cost is part of the run.
            shared = {
                "queue_url": queue_url,
                "store_url": store_url,
                "heartbeat_s": 5,
                "max_concurrent_jobs": 1,
            }
            store = JobStore(store_url)
            rounds: list[dict[str, Any]] = []
            with api_process(api_data, logs / "api.log", **shared) as url:
                # What runs on the front VM in a deployment: the API, the store, the queue, the XRootD proxy.
                ports = {"API": url, "PostgreSQL": store_url, "redis": queue_url, "XRootD proxy": files[0]}
                front_ports = {part: port_of(address) for part, address in ports.items()}
                env = {"api_data": api_data, "logs": logs, "shared": shared, "front_ports": front_ports}
                modes = list(MODES)
                order = [m for i in range(args.rounds) for m in (modes if i % 2 == 0 else modes[::-1])]
                for i, mode in enumerate(order):
                    result = throughput_round(url, store, files, mode, args.jobs, f"r{i}", env)
                    rounds.append(result)
                    print(f"round {i + 1}/{len(order)}, {mode}: {result['makespan_s']:.1f} s, "
                          f"{result['jobs_per_min']:.2f} jobs/min, failed {len(result['failed'])}", flush=True)  # fmt: skip
                served = served_part(url, store, files, args.served, env) if args.served else None
            store.dispose()
    except Exception:
        print(f"logs kept in {logs}", file=sys.stderr)
        raise
    shutil.rmtree(base, ignore_errors=True)
    return {"rounds": rounds, "served": served}


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_text(samples: list[float]) -> str:
    return f"median {median(samples):.2f}, max {max(samples):.2f}"


def report(result: dict[str, Any], args: argparse.Namespace, stamp: str) -> str:
    rounds = result["rounds"]
    by = {mode: [r for r in rounds if r["mode"] == mode] for mode in MODES}
    rate = {mode: median([r["jobs_per_min"] for r in rows]) for mode, rows in by.items()}
    failed = [f for r in rounds for f in r["failed"]]
    lines = [
        "# Scaling: one training worker against two, and publish to served on a replica (issue 15)",
        "",
        f"`bench/scaling_bench.py --jobs {args.jobs} --rounds {args.rounds} --served {args.served}`, {stamp}, "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        "Real parts on loopback: redis-server (queue) and PostgreSQL 15 (job store), the API "
        "(`python -m appliance serve`), worker processes (`python -m appliance worker`, each with its own data "
        "directory, `max_concurrent_jobs` 1, heartbeat 5 s), jobs reading two generated files (8,000 events) "
        "through a loopback XRootD proxy, in isolated network namespaces under their own uids. Every process "
        "shares the machine's cores, and so did other engineers' work (the load average below).",
        "",
        f"## Jobs per minute: {args.jobs} tiny jobs submitted at once",
        "",
        f"Each job: {TINY_MODEL['layers'][0]['units']}-unit MLP, 1 epoch, "
        f"{TINY_PARAMS['nevts']} events, batch {TINY_PARAMS['batch_size']}, `cpus` 1 (the default); the run "
        "is the time from the first submission to the last job's finish (the store's stamps). Interleaved "
        f"rounds ({', '.join(MODES)}, then back), {args.rounds} of each, median. The workers publish into "
        "their own model directory (no replica in this part: the delivery is measured below). "
        '"a core each": each worker process pinned to a core of its own (`sched_setaffinity`), as each '
        "worker VM has its own cores.",
        "",
        "| workers | run s (median) | jobs/min (median) | ratio to 1 worker | a job's own run s (median) "
        "| each round's jobs/min | jobs per worker | load average (1 min) during the rounds |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for mode, rows in by.items():
        bold = "**" if mode != "1w" else ""
        lines.append(
            f"| {mode}{' (baseline)' if mode == '1w' else ''} | {median([r['makespan_s'] for r in rows]):.1f} | "
            f"{rate[mode]:.2f} | {bold}{rate[mode] / rate['1w']:.2f}{bold} | "
            f"{median([r['job_run_s'] for r in rows]):.1f} | "
            f"{', '.join(format(r['jobs_per_min'], '.2f') for r in rows)} | "
            f"{'; '.join('/'.join(map(str, r['per_worker'])) for r in rows)} | "
            f"{load_text([s for r in rows for s in r['load']])} |"
        )
    parts = list(rounds[0]["cpu_per_job_s"])
    lines += [
        "",
        f"Failed jobs: {len(failed)}{': ' + '; '.join(failed[:5]) if failed else ''}. "
        f"Submitting the {args.jobs} jobs took {median([r['submit_s'] for r in rounds]):.1f} s (median), "
        "inside the run. The 1-minute load average as each round started (the machine's other work and the "
        f"previous round's tail): {', '.join(format(r['load'][0], '.2f') for r in rounds)}. "
        f"The whole bench took {result['bench_s'] / 60:.1f} min.",
        "",
        "CPU seconds per job, by what would run where (user + system time of each process tree over the "
        "round, reaped children included; the workers' column includes the jobs they ran), median over the "
        "rounds:",
        "",
        f"| workers | {' | '.join(parts)} | front in all |",
        f"| --- | {' | '.join('---:' for _ in parts)} | ---: |",
    ]
    front_total = {}
    for mode, rows in by.items():
        cells = {part: median([r["cpu_per_job_s"][part] for r in rows]) for part in parts}
        front_total[mode] = median(
            [sum(v for k, v in r["cpu_per_job_s"].items() if k != "workers") for r in rows]
        )
        lines.append(
            f"| {mode} | {' | '.join(format(cells[part], '.2f') for part in parts)} | {front_total[mode]:.2f} |"
        )
    result["front_cpu_per_job_s"] = median(list(front_total.values()))
    result["worker_cpu_per_job_s"] = median([r["cpu_per_job_s"]["workers"] for r in rounds])
    result["rate"] = rate
    result["job_run_s"] = {mode: median([r["job_run_s"] for r in rows]) for mode, rows in by.items()}
    served = result["served"]
    if served:
        d, p = served["delivered"], served["plain"]
        total_d, total_p = median([s["total_s"] for s in d]), median([s["total_s"] for s in p])
        pairs = list(zip(d, p, strict=True))
        claims = [s["claim_s"] for s in d if s["claim_s"] is not None]
        uploads = [s["upload_s"] for s in d if s["upload_s"] is not None]
        lines += [
            "",
            "## Publish to served on a remote replica",
            "",
            f"{len(d)} job(s), one worker with `tfaas_replicas` (one TFaaS replica, one gunicorn worker, its own "
            "model directory, OIDC auth with the test identity provider; the worker's service token from the "
            "client-credentials grant). From the publish (the store's delivery row, stamped when the version "
            "was handed out) to the first successful `/v1/models/NAME/versions/V:predict` of that version, "
            f"polled every {POLL_S * 1000:.0f} ms. Baseline: the same job's bundle "
            f"({median([s['bytes'] for s in d]) / 1024:.0f} KiB) uploaded by its owner with `POST /upload` "
            "once the job has finished, polled the same way; the two alternate, median of each.",
            "",
            "| | to the deliverer's claim | upload and install (to the 201) | 201 to first prediction "
            "| publish (or upload start) to served | ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| plain client `POST /upload` (baseline) | - | {median([s['upload_s'] for s in p]):.2f} s | "
            f"{median([s['after_answer_s'] for s in p]):.2f} s | {total_p:.2f} s | 1.00 |",
            f"| delivery by the worker | {median(claims) if claims else float('nan'):.2f} s | "
            f"{median(uploads) if uploads else float('nan'):.2f} s | "
            f"{median([s['after_answer_s'] for s in d]):.2f} s | {total_d:.2f} s | **{total_d / total_p:.2f}** |",
            "",
            f"Each sample, delivered / plain (s): "
            f"{', '.join(format(a['total_s'], '.2f') + '/' + format(b['total_s'], '.2f') for a, b in pairs)}. "
            f"Load average (1 min) during this part: {load_text(served['load'])}.",
        ]
    return "\n".join(lines + on_paper(result)) + "\n"


def on_paper(result: dict[str, Any]) -> list[str]:
    """What should scale on separate VMs and what not, with this run's figures where it has them."""
    rate, run_s = result["rate"], result["job_run_s"]
    front, worker = result["front_cpu_per_job_s"], result["worker_cpu_per_job_s"]
    served = result["served"]
    lines = [
        "",
        "## On paper: what should scale on separate VMs, and what not",
        "",
        "On this machine every part shares two cores, so part 1 shows the shape, not the size, of the gain. "
        "Reasoned from the design (docs/scaling.md) and this run's figures:",
        "",
        "- **Training workers: jobs per minute should grow with the number of worker VMs**, each worker "
        "bound by its own cores (a job's CPU time is spent on its worker: "
        f"{worker:.1f} CPU s per job here, jobs and worker together). A job of `cpus` 1 is pinned "
        "(`taskset`) to a free core of the host (`appliance/server/cores.py`: a lock per core that every "
        "worker process of the host takes), so two workers on one host run their jobs on different cores: "
        f"a job's own run took {run_s['1w']:.1f} s with one worker and {run_s['2w']:.1f} s with two, the "
        "difference being the other work sharing the two cores (the other job's worker, the front, other "
        "engineers' work). With a core each (each worker process limited to its own core, as separate VMs "
        f"give) two workers made {rate['2w, a core each'] / rate['1w']:.2f} times the jobs per minute of one. "
        "On separate VMs, N workers should give close to N times one worker's rate while the front keeps up, "
        "and one worker VM with `max_concurrent_jobs` up to its core count runs that many one-core jobs on "
        "cores of their own.",
        f"- **The front costs about {front:.2f} CPU s per job** (API, PostgreSQL, redis and the XRootD proxy "
        f"together, measured above), against {worker:.1f} s on the worker: one front core keeps up with about "
        f"{60 / front:.0f} such jobs a minute, some {worker / front:.0f} busy one-core workers of jobs this "
        "small. Larger jobs cost the front about the same per job (a submission, a claim, a publish; a store "
        "write every `heartbeat_s` per worker and per running job) but run far longer, so the front limits "
        "only very many short jobs. What grows with the workers' data rather than their number: every job "
        "reads through the front's XRootD proxy and writes its job directory over NFS to the front's disk, "
        "so data-heavy jobs are bound by the front's network and disk, not by the count of workers.",
        "- **Replica fan-out: delivery cost grows with the number of replicas M**; serving capacity grows "
        "with M behind haproxy. Each version is uploaded to every replica (M times the bundle over the "
        "network), each deliverer sends one delivery at a time, so with W workers delivering the last "
        "replica serves after about ceil(M / W) upload times after the publish. Every replica installs every "
        "model (memory per replica is that of all models, not 1/M).",
        "- **What does not scale out**: the front is one VM (API, PostgreSQL, redis, XRootD proxy, NFS "
        "server, haproxy), grown by giving it more cores; a model's versions are numbered one at a time under "
        "a store lock (one short transaction per publish, negligible at job rates).",
    ]
    if served:
        d = served["delivered"]
        uploads = [s["upload_s"] for s in d if s["upload_s"] is not None]
        if uploads:
            lines.insert(
                -1,
                f"  Here one upload and install took {median(uploads):.2f} s (median), publish to served "
                f"{median([s['total_s'] for s in d]):.2f} s, for a {median([s['bytes'] for s in d]) / 1024:.0f} "
                "KiB bundle.",
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs submitted at once in each round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each worker count, interleaved")
    parser.add_argument("--served", type=int, default=5, help="publish-to-served samples (0: skip)")
    parser.add_argument("--output", type=Path, default=RESULTS / "scaling.md")
    args = parser.parse_args(argv)
    # A SIGTERM (kill, timeout) ends the bench like Ctrl-C: its servers are stopped by their context managers
    # instead of outliving it (redis-server and PostgreSQL did).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    result = run(args)
    result["bench_s"] = time.monotonic() - began
    text = report(result, args, stamp)
    atomic.write_text(args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
