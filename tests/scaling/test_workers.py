"""Two worker processes on one Redis broker and one PostgreSQL job store, as two worker machines would be.

Both are Debian's real servers, started by the test on loopback (redis with a password and append-only
persistence). Each worker has its own data directory and model repository; what they share with the API is
the store, the broker and the job directories (``DATA_DIR/jobs``, a shared mount between machines,
docs/scaling.md). Jobs are spread over both and run once each; a worker killed with SIGKILL mid-job leaves
its job failed with the reason, found by the other worker's heartbeat; a cancel reaches the job on whichever
worker runs it; /health counts the live workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from appliance.server.isolation import kill_processes_of
from appliance.server.store import JobStore
from tests.auth.idp import IdentityProvider, User
from tests.scaling.servers import postgres_server, redis_server, tfaas_replica
from tests.server.conftest import (
    ENDLESS_PARAMS,
    api_process,
    follow_job,
    http_getter,
    wait_until,
    worker_process,
    workflow,
)
from tests.support.processes import free_port

pytestmark = pytest.mark.slow
ALICE = {"X-Forwarded-User": "alice"}
STALE_AFTER_S = 8


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, str]]:
    """The settings every machine shares: the broker and the store."""
    with redis_server() as queue_url, postgres_server() as store_url:
        yield {"queue_url": queue_url, "store_url": store_url, "stale_after_s": STALE_AFTER_S}


@contextlib.contextmanager
def worker_machine(api_data_dir: Path, name: str, log: Path, remote: dict, shared: dict) -> Iterator:
    """A worker with its own data directory and models, the job directories mounted from the front."""
    own = Path(tempfile.mkdtemp(prefix=f"mlaas4hep-{name}-"))
    own.chmod(0o755)
    (own / "jobs").symlink_to(api_data_dir / "jobs")
    try:
        with worker_process(own, log, *remote.values(), **shared) as proc:
            yield proc, own
    finally:
        shutil.rmtree(own, ignore_errors=True)


def post_job(url: str, body: dict) -> dict:
    response = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def test_jobs_spread_over_two_workers_and_run_once(data_dir, tmp_path, remote_samples, shared):
    store = JobStore(shared["store_url"])
    with (
        api_process(data_dir, tmp_path / "api.log", **shared) as url,
        worker_machine(data_dir, "w1", tmp_path / "w1.log", remote_samples, shared) as (w1, own1),
        worker_machine(data_dir, "w2", tmp_path / "w2.log", remote_samples, shared) as (w2, own2),
    ):
        wait_until(lambda: requests.get(f"{url}/health", timeout=10).json()["live_workers"] == 2, 30)
        jobs = [post_job(url, workflow(remote_samples, name=f"spread{n}")) for n in range(4)]
        get = http_getter(url, "alice")
        for job in jobs:
            done = follow_job(get, job["id"], ("succeeded", "failed", "cancelled"), 600)
            assert done["state"] == "succeeded", done["error"]
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["queue_depth"] == 0 and health["jobs"]["succeeded"] >= 4
        pids = {str(w1.pid): own1, str(w2.pid): own2}
        ran_on = {}
        for job in jobs:
            worker = store.get(job["id"]).worker
            ran_on[job["id"]] = worker.rpartition(":")[2]
            log = (data_dir / "jobs" / job["id"] / "job.log").read_text()
            assert log.count("training exited with code") == 1, log  # it ran once
            # Published into the repository of the machine that ran it, and nowhere else.
            for pid, own in pids.items():
                published = (own / "models" / f"alice.{job['name']}" / "1" / "saved_model.pb").exists()
                assert published == (pid == ran_on[job["id"]]), (job["name"], pid)
        assert set(ran_on.values()) == set(pids), ran_on  # both workers took jobs
    assert store.live_workers(STALE_AFTER_S) == []  # both left the list when stopped
    store.dispose()


def test_a_killed_worker_fails_its_job_and_cancel_reaches_the_other(
    data_dir, tmp_path, remote_samples, shared
):
    store = JobStore(shared["store_url"])
    with (
        api_process(data_dir, tmp_path / "api.log", **shared) as url,
        worker_machine(data_dir, "w1", tmp_path / "w1.log", remote_samples, shared) as (w1, _),
        worker_machine(data_dir, "w2", tmp_path / "w2.log", remote_samples, shared) as (w2, _),
    ):
        get = http_getter(url, "alice")
        first = post_job(url, workflow(remote_samples, name="doomed", params=ENDLESS_PARAMS))
        second = post_job(url, workflow(remote_samples, name="cancelme", params=ENDLESS_PARAMS))
        for job in (first, second):
            follow_job(get, job["id"], ("running",), 120)
            wait_until(lambda j=job: get(j["id"])["progress"].get("stage") == "train", 180)
        record = store.get(first["id"])
        victim, survivor = (w1, w2) if record.worker.endswith(f":{w1.pid}") else (w2, w1)
        assert store.get(second["id"]).worker.endswith(f":{survivor.pid}")  # one job each
        os.kill(victim.pid, signal.SIGKILL)  # the machine is gone: no clean-up of any kind
        victim.wait(10)
        if record.uid is not None:  # what the dead machine ran dies with it
            kill_processes_of(record.uid)
        failed = follow_job(get, first["id"], ("failed", "queued"), STALE_AFTER_S + 60)
        assert "stopped answering" in failed["error"], failed
        # The dead worker's last heartbeat ages out of /health as its job's did (within a beat or two).
        wait_until(lambda: requests.get(f"{url}/health", timeout=10).json()["live_workers"] == 1, 10)
        response = requests.delete(f"{url}/jobs/{second['id']}", headers=ALICE, timeout=30)
        assert response.status_code == 202
        cancelled = follow_job(get, second["id"], ("cancelled", "failed", "succeeded"), 60)
        assert cancelled["state"] == "cancelled"
    store.dispose()


def test_a_trained_model_reaches_a_replica_with_no_shared_disk(data_dir, tmp_path, remote_samples, shared):
    """The worker delivers the job's checked bundle to a TFaaS replica over its upload API, with a
    client-credentials token; the version is the store's; the job's owner predicts from the replica."""
    service = User("svc-mlaas4hep-workers", "mlaas4hep-publisher")
    with IdentityProvider.running() as idp:
        idp.add_client("mlaas4hep-workers", "worker-secret", service)
        delivery = {
            "tfaas_replicas": f"http://127.0.0.1:{free_port()}",
            "delivery_issuer": idp.issuer,
            "delivery_client_id": "mlaas4hep-workers",
            "delivery_client_secret": "worker-secret",  # from the environment, never a command line
            "delivery_audience": "tfaas-client",
        }
        port = int(delivery["tfaas_replicas"].rpartition(":")[2])
        with (
            tfaas_replica(
                idp, tmp_path / "replica", port, tmp_path / "r.log", "tfaas-client", [service.sub]
            ) as tf,
            api_process(data_dir, tmp_path / "api.log", **shared) as url,
            worker_machine(data_dir, "w1", tmp_path / "w1.log", remote_samples, {**shared, **delivery}),
        ):
            job = post_job(url, workflow(remote_samples, name="served"))
            done = follow_job(http_getter(url, "alice"), job["id"], ("succeeded", "failed"), 600)
            assert done["state"] == "succeeded", done["error"]
            assert done["result"]["version"] == 1 and done["result"]["published"] == [tf]
            token = idp.mint(User("alice-sub", "alice"), "tfaas-client")
            headers = {"Authorization": f"Bearer {token}"}

            def served() -> bool:
                answer = requests.get(f"{tf}/params/alice.served", headers=headers, timeout=30)
                return answer.status_code == 200 and answer.json()["version"] == 1

            wait_until(served, 60)
            # The replica holds the job's own bundle, numbered as the store numbered it.
            copy = tmp_path / "replica" / "alice.served" / "1"
            job_params = json.loads((data_dir / "jobs" / job["id"] / "bundle" / "params.json").read_text())
            assert json.loads((copy / "params.json").read_text())["features"] == job_params["features"]
