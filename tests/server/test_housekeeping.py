"""Housekeeping: DELETE of a finished job, expiry shown in the job, the sweep of expired jobs and uploads."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime

import pytest

from appliance.server.api import openapi_document
from appliance.server.housekeeping import DAY_S, delete_job, start_sweeper, sweep
from appliance.server.settings import Settings
from appliance.server.store import CANCELLED, QUEUED, SUCCEEDED, Job, JobStore
from servicecore.errors import BadInputError
from servicecore.naming import owner_namespace
from tests.server.conftest import server_env, wait_until, worker_process, workflow
from tests.server.test_api import ALICE, BOB, assert_error, submit


def cancelled_job(client, remote_samples) -> dict:
    job = submit(client, workflow(remote_samples)).get_json()
    assert client.delete(f"/jobs/{job['id']}", headers=ALICE).status_code == 202
    return client.get(f"/jobs/{job['id']}", headers=ALICE).get_json()


def test_delete_a_finished_job_removes_its_files_and_record(client, data_dir, remote_samples):
    job = cancelled_job(client, remote_samples)
    assert job["state"] == "cancelled" and job["expires"] is None  # kept for ever by default
    directory = data_dir / "jobs" / job["id"]
    assert directory.is_dir()
    assert_error(client.delete(f"/jobs/{job['id']}", headers=BOB), 404)  # not Bob's: unknown to him
    assert directory.is_dir()

    deleted = client.delete(f"/jobs/{job['id']}", headers=ALICE)
    assert deleted.status_code == 200 and deleted.get_json() == {"deleted": job["id"], "state": "cancelled"}
    assert not directory.exists()
    assert not list((data_dir / "jobs" / ".incoming").iterdir())  # nothing left aside either
    assert_error(client.get(f"/jobs/{job['id']}", headers=ALICE), 404)
    assert_error(client.delete(f"/jobs/{job['id']}", headers=ALICE), 404)
    assert job["id"] not in [j["id"] for j in client.get("/jobs", headers=ALICE).get_json()["jobs"]]


def test_delete_of_a_queued_job_cancels_it_and_keeps_it(client, data_dir, remote_samples):
    job = submit(client, workflow(remote_samples)).get_json()
    answer = client.delete(f"/jobs/{job['id']}", headers=ALICE)
    assert answer.status_code == 202 and answer.get_json()["state"] == "cancelled"
    assert (data_dir / "jobs" / job["id"]).is_dir()  # its log can still be read until it is deleted


def test_a_job_that_is_not_finished_is_never_deleted(data_dir):
    settings = Settings.load(environ=server_env(data_dir))
    store = JobStore(settings.job_db)
    job = Job(id="a" * 32, owner="alice", name="m", model_name="alice.m", state=QUEUED, resources={},
              created=time.time())  # fmt: skip
    store.add(job)
    (settings.jobs_dir / job.id).mkdir(parents=True)
    assert not delete_job(settings, store, job)
    # A stale view that says "finished" while the record says otherwise: the directory is put back.
    stale = Job(**{**job.__dict__, "state": CANCELLED})
    assert not delete_job(settings, store, stale)
    assert (settings.jobs_dir / job.id).is_dir() and store.get(job.id) is not None


def test_expiry_is_shown_in_the_job(make_app, remote_samples):
    client = make_app(job_retention_days=2.5)
    job = cancelled_job(client, remote_samples)
    finished = datetime.fromisoformat(job["finished"]).timestamp()
    assert datetime.fromisoformat(job["expires"]).timestamp() == finished + 2.5 * DAY_S
    queued = submit(client, workflow(remote_samples)).get_json()
    assert queued["expires"] is None  # a job that has not finished does not expire


def test_openapi_declares_delete_and_expiry(client):
    document = openapi_document(client.application)
    delete = document["paths"]["/jobs/{job_id}"]["delete"]
    assert {"200", "202", "404", "409", "401"} <= set(delete["responses"])
    assert "expires" in document["components"]["schemas"]["Job"]["properties"]


def add_finished(store: JobStore, settings: Settings, job_id: str, finished: float) -> Job:
    job = Job(id=job_id, owner="alice", name="m", model_name="alice.m", state=SUCCEEDED, resources={},
              created=finished - 60, finished=finished)  # fmt: skip
    store.add(job)
    (settings.jobs_dir / job_id / "plots").mkdir(parents=True)
    (settings.jobs_dir / job_id / "job.log").write_text("done\n")
    return job


def make_upload(settings: Settings, upload_id: str, made: float) -> None:
    upload = settings.uploads_dir / owner_namespace("alice") / upload_id
    (upload / "data").mkdir(parents=True)
    (upload / "data" / "file.root").write_bytes(b"root")
    os.utime(upload, (made, made))


def test_sweep_deletes_what_expired_and_keeps_the_rest(data_dir):
    settings = Settings.load(environ=server_env(data_dir, job_retention_days=1, upload_retention_days=2))
    store = JobStore(settings.job_db)
    at = time.time()
    old = add_finished(store, settings, "1" * 32, at - 1.5 * DAY_S)
    young = add_finished(store, settings, "2" * 32, at - 0.5 * DAY_S)
    running = Job(id="3" * 32, owner="alice", name="m", model_name="alice.m", state="running", resources={},
                  created=at - 10 * DAY_S, started=at - 10 * DAY_S)  # fmt: skip
    store.add(running)
    make_upload(settings, "4" * 32, at - 3 * DAY_S)
    make_upload(settings, "5" * 32, at - 1 * DAY_S)
    owner_uploads = settings.uploads_dir / owner_namespace("alice")
    (owner_uploads / "latest").write_text("4" * 32)

    report = sweep(settings, store, at=at)
    assert report.jobs == [old.id] and report.uploads == ["4" * 32]
    assert store.get(old.id) is None and not (settings.jobs_dir / old.id).exists()
    assert store.get(young.id) is not None and (settings.jobs_dir / young.id / "job.log").is_file()
    assert store.get(running.id).state == "running"  # never expires while it runs
    assert not (owner_uploads / ("4" * 32)).exists() and (owner_uploads / ("5" * 32)).is_dir()
    assert not (owner_uploads / "latest").exists()  # it named the expired upload
    assert not list((owner_uploads / ".incoming").iterdir())

    later = sweep(settings, store, at=at + DAY_S)
    assert later.jobs == [young.id] and later.uploads == ["5" * 32]


def test_zero_keeps_everything_and_no_sweeper_runs(data_dir):
    settings = Settings.load(environ=server_env(data_dir))
    store = JobStore(settings.job_db)
    old = add_finished(store, settings, "6" * 32, time.time() - 1000 * DAY_S)
    assert sweep(settings, store).jobs == [] and store.get(old.id) is not None
    assert start_sweeper(settings, store, threading.Event()) is None


def test_the_sweeper_thread_sweeps_until_stopped(data_dir):
    settings = Settings.load(environ=server_env(data_dir, job_retention_days=1, sweep_interval_s=0.2))
    store = JobStore(settings.job_db)
    stop = threading.Event()
    thread = start_sweeper(settings, store, stop)
    try:
        old = add_finished(store, settings, "7" * 32, time.time() - 2 * DAY_S)
        deadline = time.monotonic() + 10
        while store.get(old.id) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.get(old.id) is None and not (settings.jobs_dir / old.id).exists()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    "setting", [{"job_retention_days": -1}, {"upload_retention_days": -0.5}, {"sweep_interval_s": 0}]
)
def test_bad_housekeeping_settings_are_refused(data_dir, setting):
    with pytest.raises(BadInputError, match=next(iter(setting))):
        Settings.load(environ=server_env(data_dir, **setting))


def test_the_worker_sweeps(data_dir, tmp_path):
    """``python -m appliance worker`` runs the sweep: a job finished long ago goes, a young one stays."""
    settings = Settings.load(environ=server_env(data_dir))
    store = JobStore(settings.job_db)
    old = add_finished(store, settings, "8" * 32, time.time() - 3 * DAY_S)
    young = add_finished(store, settings, "9" * 32, time.time())
    with worker_process(data_dir, tmp_path / "worker.log", job_retention_days=1, sweep_interval_s=0.5):
        wait_until(lambda: store.get(old.id) is None, 30)
    assert not (settings.jobs_dir / old.id).exists()
    assert store.get(young.id) is not None and (settings.jobs_dir / young.id).is_dir()
    assert "housekeeping: jobs kept 1 days" in (tmp_path / "worker.log").read_text()
