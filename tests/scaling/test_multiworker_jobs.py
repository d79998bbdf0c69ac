"""A job that asks for two workers runs one task on each of two worker processes and matches a one-worker job.

Both workers are real ``python -m appliance worker`` processes, root, so every task runs under the job's uid
in its own network namespace: a task reaches its peer only through the relays (the peer's address allowed,
its own port relayed in). The two-worker job succeeds, its tasks ran on both workers, and its test AUC is
within 0.01 of a one-worker job on the same data. Asking for more workers than are live, or than
``max_workers_per_job``, is a 400 naming the numbers; so is a PyTorch model on two workers.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from appliance.server.store import QUEUED, RUNNING, Job, JobStore, TaskOfThisWorkerError
from tests.scaling.servers import postgres_server
from tests.server.conftest import (
    api_process,
    follow_job,
    http_getter,
    wait_until,
    worker_process,
    workflow,
)

pytestmark = [
    pytest.mark.slow,
]
ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and job uids need a root worker")
ALICE = {"X-Forwarded-User": "alice"}
TOLERANCE = 0.01  # the issue's: a two-worker job's test AUC within 0.01 of a one-worker job's
PARAMS = {"epochs": 5, "batch_size": 64, "chunk_size": 1000, "seed": 7}
STALE_AFTER_S = 8


def post(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=120)


@ROOT
def test_a_two_worker_job_matches_a_one_worker_job(data_dir, tmp_path, remote_samples):
    settings = {"max_workers_per_job": 2, "rendezvous_timeout_s": 120}
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "w1", "w2")}
    urls = list(remote_samples.values())
    with (
        api_process(data_dir, logs["api"], **settings) as url,
        worker_process(data_dir, logs["w1"], *urls, **settings),
        worker_process(data_dir, logs["w2"], *urls, **settings),
    ):
        wait_until(lambda: requests.get(f"{url}/health", timeout=10).json()["live_workers"] == 2, 30)
        get = http_getter(url, "alice")

        over_live = post(url, workflow(remote_samples, workers=3, params=PARAMS))
        assert over_live.status_code == 400
        assert "above this server's limit of 2" in over_live.json()["error"]
        torch = {"framework": "torch", "layers": [{"type": "Linear", "units": 1}], "loss": "bce_with_logits"}
        refused = post(url, workflow(remote_samples, workers=2, model=torch, params=PARAMS))
        assert (
            refused.status_code == 400 and "torch model cannot train on 2 workers" in refused.json()["error"]
        )

        one = post(url, workflow(remote_samples, name="one", params=PARAMS))
        two = post(url, workflow(remote_samples, name="two", workers=2, params=PARAMS))
        assert one.status_code == 201 and two.status_code == 201, (one.text, two.text)
        single = follow_job(get, one.json()["id"], ("succeeded", "failed"), 600)
        multi = follow_job(get, two.json()["id"], ("succeeded", "failed"), 600)
        assert single["state"] == "succeeded", single
        assert multi["state"] == "succeeded", (multi, logs["w1"].read_text()[-3000:])
        workers = JobStore(data_dir / "jobs.db").task_workers(two.json()["id"])
        assert sorted(workers) == [0, 1] and len(set(workers.values())) == 2  # one task on each worker
        auc_one, auc_two = single["result"]["metrics"]["auc"], multi["result"]["metrics"]["auc"]
        assert auc_one > 0.85
        assert abs(auc_two - auc_one) <= TOLERANCE, (auc_one, auc_two)
        assert (
            multi["result"]["metrics"]["events"] == single["result"]["metrics"]["events"]
        )  # same test events


@ROOT
def test_more_workers_than_live_is_refused_naming_both(data_dir, tmp_path, remote_samples):
    urls = list(remote_samples.values())
    with (
        api_process(data_dir, tmp_path / "api.log", max_workers_per_job=4) as url,
        worker_process(data_dir, tmp_path / "w1.log", *urls),
        worker_process(data_dir, tmp_path / "w2.log", *urls),
    ):
        wait_until(lambda: requests.get(f"{url}/health", timeout=10).json()["live_workers"] == 2, 30)
        refused = post(url, workflow(remote_samples, workers=3))
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert "workers 3 is more than the 2 live worker(s)" in error
        above = post(url, workflow(remote_samples, workers=5))
        assert above.status_code == 400
        assert "workers 5 is above this server's limit of 4 per job" in above.json()["error"]
        assert post(url, workflow(remote_samples, workers=0)).status_code == 400


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        store = JobStore(tmp_path / "jobs.db")
        yield store
        store.dispose()
        return
    with postgres_server() as url:
        store = JobStore(url)
        yield store
        with store.engine.begin() as db:
            db.execute(sa.text("DELETE FROM job_tasks"))
        store.dispose()


def test_the_task_table_and_the_claims(store: JobStore):
    job = Job(
        id="a" * 32, owner="alice", name="n", model_name="alice.n", state=QUEUED,
        resources={"workers": 2}, created=0.0,
    )  # fmt: skip
    store.add(job)
    claimed = store.claim_task(job.id, 1, "host:1", range(61000, 61002))
    assert claimed is not None and claimed.state == RUNNING and claimed.uid == 61000
    assert store.claim_task(job.id, 1, "host:2", range(61000, 61002)) is None  # taken
    with pytest.raises(TaskOfThisWorkerError):
        store.claim_task(job.id, 0, "host:1", range(61000, 61002))
    joined = store.claim_task(job.id, 0, "host:2", range(61000, 61002))
    assert joined is not None and joined.uid == 61000  # the job's uid, shared
    store.register_task(job.id, 0, "127.0.0.1:5000")
    assert store.task_addresses(job.id) == {0: "127.0.0.1:5000"}
    assert not store.job_stopped(job.id)
    assert not store.finish_task(job.id, 0, "host")  # task 1 still runs on that host
    assert store.finish_task(job.id, 1, "host")
    store.finish(job.id, "failed", error="x")
    assert store.job_stopped(job.id)
    assert store.claim_task(job.id, 1, "host:3") is None  # a finished job takes no task
    assert store.delete(job.id) and store.task_workers(job.id) == {}


def test_tasks_that_do_not_all_join_fail_the_job_after_the_rendezvous_timeout(tmp_path: Path):
    """Two jobs each holding one of two workers (each waiting for the other's) cannot deadlock: every task
    gives up after rendezvous_timeout_s, naming how many joined."""
    from appliance.server.jobdir import JobDir
    from appliance.server.runner import JobRun, TaskPlan
    from appliance.server.settings import Settings

    settings = Settings.load(
        environ={"MLAAS4HEP_DATA_DIR": str(tmp_path), "MLAAS4HEP_RENDEZVOUS_TIMEOUT_S": "1"}
    )
    store = JobStore(tmp_path / "jobs.db")
    job = Job(
        id="b" * 32, owner="alice", name="n", model_name="alice.n", state=QUEUED,
        resources={"memory_mb": 512, "cpus": 1, "wall_time_s": 60, "workers": 2}, created=0.0,
    )  # fmt: skip
    store.add(job)
    JobDir.of(settings, job.id).root.mkdir(parents=True)
    claimed = store.claim_task(job.id, 1, "host:1")
    assert claimed is not None
    run = JobRun(settings, claimed, store, "host:1", None, task=TaskPlan(1, 2))
    assert run._rendezvous() == ("failed", "1 of 2 workers joined within 1 s", None)
    assert run.listener is not None and run.listener.getsockname()[0] == "127.0.0.1"
    run.listener.close()
    # Once the job ended (another task failed it, or a cancel), a waiting task stops at once.
    store.finish(job.id, "failed", error="task 0 gave up")
    started = time.monotonic()
    assert run._rendezvous() == ("failed", "the job ended on another worker", None)
    assert time.monotonic() - started < 1
    run.listener.close()


def test_a_task_whose_worker_went_silent_fails_its_job(tmp_path: Path):
    """The other tasks keep the job's heartbeat fresh, so the job fails by the silent task's worker."""
    from appliance.server.queue import JobQueue
    from appliance.server.settings import Settings

    queue = JobQueue(Settings.load(environ={"MLAAS4HEP_DATA_DIR": str(tmp_path)}))
    job = Job(
        id="c" * 32, owner="alice", name="n", model_name="alice.n", state=QUEUED,
        resources={"workers": 2}, created=0.0,
    )  # fmt: skip
    queue.store.add(job)
    queue.store.worker_beat("alive:1", "alive", "v", 1)
    assert queue.store.claim_task(job.id, 0, "alive:1") is not None
    assert queue.reap_stale() == []  # the only task's worker lives
    assert queue.store.claim_task(job.id, 1, "ghost:2") is not None  # never beat, or long silent
    assert queue.reap_stale() == [job.id]
    failed = queue.store.get(job.id)
    assert (
        failed.state == "failed" and "the worker running task 1 (ghost:2) stopped answering" in failed.error
    )


@ROOT
def test_cancel_reaches_every_task_and_a_killed_worker_fails_the_job(data_dir, tmp_path, remote_samples):
    settings = {"max_workers_per_job": 2, "stale_after_s": STALE_AFTER_S}
    urls = list(remote_samples.values())
    endless = {**PARAMS, "epochs": 100_000}
    with (
        api_process(data_dir, tmp_path / "api.log", **settings) as url,
        worker_process(data_dir, tmp_path / "w1.log", *urls, **settings) as w1,
        worker_process(data_dir, tmp_path / "w2.log", *urls, **settings) as w2,
    ):
        wait_until(lambda: requests.get(f"{url}/health", timeout=10).json()["live_workers"] == 2, 30)
        get = http_getter(url, "alice")
        store = JobStore(data_dir / "jobs.db")

        def training(job_id: str) -> None:
            follow_job(get, job_id, ("running",), 120)
            wait_until(lambda: get(job_id)["progress"].get("epoch", 0) >= 1, 300)  # both tasks past one epoch

        cancelled = post(url, workflow(remote_samples, name="cancelme", workers=2, params=endless)).json()
        training(cancelled["id"])
        response = requests.delete(f"{url}/jobs/{cancelled['id']}", headers=ALICE, timeout=30)
        assert response.status_code == 202
        done = follow_job(get, cancelled["id"], ("cancelled", "failed", "succeeded"), 60)
        assert done["state"] == "cancelled", done
        # Both tasks ended, whichever worker ran them.
        wait_until(lambda: store.running_tasks() == [], 30)

        doomed = post(url, workflow(remote_samples, name="doomed", workers=2, params=endless)).json()
        training(doomed["id"])
        task1 = store.task_workers(doomed["id"])[1]
        victim = w1 if task1.endswith(f":{w1.pid}") else w2
        os.kill(victim.pid, signal.SIGKILL)  # its task's training dies with it (parent-death signal)
        victim.wait(10)
        failed = follow_job(get, doomed["id"], ("failed", "cancelled", "succeeded"), STALE_AFTER_S + 120)
        assert failed["state"] == "failed", failed
        # Either the chief's training found its peer gone, or the reaper the silent worker of task 1.
        assert "task 1" in failed["error"] or "training failed" in failed["error"], failed["error"]
        wait_until(
            lambda: store.running_tasks() == [] or all(w == task1 for _, _, w in store.running_tasks()), 60
        )
        store.dispose()
