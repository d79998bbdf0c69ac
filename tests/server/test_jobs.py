"""Real workers running real training subprocesses: bad user code, cancel, concurrency, limits, restarts."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
import requests

from tests.server.conftest import (
    ENDLESS_PARAMS,
    JOB_UIDS,
    api_process,
    follow_job,
    http_getter,
    tar_gz,
    wait_until,
    worker_process,
    workflow,
)

pytestmark = pytest.mark.slow
ALICE = {"X-Forwarded-User": "alice"}


def post_job(url: str, body: dict) -> dict:
    response = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def test_user_code_that_fails_to_import_fails_the_job_with_the_reason(data_dir, tmp_path, remote_samples):
    model = b"import package_that_does_not_exist\n\ndef model(idim):\n    return None\n"
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values()),
    ):
        upload = requests.post(f"{url}/upload", data=tar_gz({"model.py": model}), headers=ALICE, timeout=60)
        assert upload.status_code == 201
        job = post_job(url, workflow(remote_samples, model="model.py"))
        done = follow_job(http_getter(url, "alice"), job["id"], ("succeeded", "failed"), 300)
    assert done["state"] == "failed"
    assert done["error"].startswith("bad input:") and "package_that_does_not_exist" in done["error"]
    assert not (data_dir / "models" / "alice.ttbar").exists()


def test_cancel_a_running_job(data_dir, tmp_path, remote_samples):
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values()),
    ):
        job = post_job(url, workflow(remote_samples, params=ENDLESS_PARAMS))
        get = http_getter(url, "alice")
        running = follow_job(get, job["id"], ("running",), 120)
        # Wait until training has started, so that the cancel stops a real training process.
        wait_until(lambda: get(job["id"])["progress"].get("stage") == "train", 180)
        assert running["started"] is not None
        response = requests.delete(f"{url}/jobs/{job['id']}", headers=ALICE, timeout=30)
        assert response.status_code == 202 and response.json()["cancel_requested"]
        done = follow_job(get, job["id"], ("cancelled", "failed", "succeeded"), 60)
    assert done["state"] == "cancelled"
    assert not (data_dir / "models" / "alice.ttbar").exists()
    assert not any(p.name.startswith(".") for p in (data_dir / "jobs" / job["id"] / "work").iterdir()
                   if p.name.startswith(".bundle"))  # fmt: skip


def test_the_concurrency_limit_keeps_extra_jobs_queued(data_dir, tmp_path, remote_samples):
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values(), max_concurrent_jobs=1),
    ):
        first = post_job(url, workflow(remote_samples, params=ENDLESS_PARAMS, name="first"))
        second = post_job(url, workflow(remote_samples, params=ENDLESS_PARAMS, name="second"))
        get = http_getter(url, "alice")
        follow_job(get, first["id"], ("running",), 120)
        wait_until(lambda: get(first["id"])["progress"].get("stage") == "train", 180)
        assert get(second["id"])["state"] == "queued"
        requests.delete(f"{url}/jobs/{first['id']}", headers=ALICE, timeout=30)
        follow_job(get, first["id"], ("cancelled",), 60)
        follow_job(get, second["id"], ("running",), 60)
        requests.delete(f"{url}/jobs/{second['id']}", headers=ALICE, timeout=30)
        follow_job(get, second["id"], ("cancelled",), 60)


def test_wall_time_limit_and_unprivileged_job_user(data_dir, tmp_path, remote_samples):
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values()),
    ):
        job = post_job(url, workflow(remote_samples, params=ENDLESS_PARAMS, wall_time=40))
        get = http_getter(url, "alice")
        done = follow_job(get, job["id"], ("failed", "succeeded", "cancelled"), 180)
    assert done["state"] == "failed" and "wall-time limit of 40 s" in done["error"]
    work = data_dir / "jobs" / job["id"] / "work"
    if os.geteuid() == 0:
        # The job ran as a uid of the range (its log says so); afterwards everything is the server's again.
        log = (data_dir / "jobs" / job["id"] / "job.log").read_text()
        match = re.search(r"--reuid (\d+) --regid \1 --clear-groups", log)
        assert match and int(match.group(1)) in JOB_UIDS, log[:2000]
        assert (work / "progress.jsonl").stat().st_uid == 0
        assert (data_dir / "jobs" / job["id"]).stat().st_mode & 0o777 == 0o700


def test_restart_recovery_after_the_worker_is_killed(data_dir, tmp_path, remote_samples):
    log = tmp_path / "w.log"
    with api_process(data_dir, tmp_path / "api.log") as url:
        get = http_getter(url, "alice")
        with worker_process(data_dir, log, *remote_samples.values()) as worker:
            job = post_job(url, workflow(remote_samples, params=ENDLESS_PARAMS))
            follow_job(get, job["id"], ("running",), 120)
            wait_until(lambda: (data_dir / "jobs" / job["id"] / "work" / "progress.jsonl").exists(), 120)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        assert get(job["id"])["state"] == "running"  # nobody has noticed yet
        queued = post_job(url, workflow(remote_samples, name="after"))  # waits while no worker runs
        with worker_process(data_dir, log, *remote_samples.values()):
            failed = follow_job(get, job["id"], ("failed",), 30)
            assert "interrupted" in failed["error"]
            finished = follow_job(get, queued["id"], ("succeeded", "failed"), 400)
            assert finished["state"] == "succeeded", finished["error"]
    # The killed job's training died with its worker: it never published anything.
    assert sorted(p.name for p in (data_dir / "models").iterdir() if not p.name.startswith(".")) == [
        "alice.after"
    ]
    assert json.loads((data_dir / "models" / "alice.after" / "1" / "params.json").read_text())["version"] == 1
