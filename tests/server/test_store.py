"""The job store on both backends, one code path: embedded SQLite and a real PostgreSQL 15 (Debian's,
started by the test on loopback). Claims are atomic under concurrency, uids are never shared, migrations
take over a store made before them with its jobs, and worker heartbeats expire."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from appliance.server.migrations import current, head
from appliance.server.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    NoFreeIdentityError,
    metadata,
    now,
)
from tests.scaling.servers import postgres_server


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        store = JobStore(tmp_path / "jobs.db")
    else:
        url = request.getfixturevalue("postgres_url")
        store = JobStore(url)
        with store.engine.begin() as db:  # each test starts empty; the schema stays
            db.execute(sa.text("DELETE FROM jobs"))
            db.execute(sa.text("DELETE FROM workers"))
    yield store
    store.dispose()


def job(n: int, owner: str = "alice", **fields: object) -> Job:
    values = dict(
        id=f"{n:032x}",
        owner=owner,
        name=f"job{n}",
        model_name=f"{owner}.m",
        state=QUEUED,
        resources={"cpus": 1},
        created=now() + n * 1e-3,
        request={"files": [n]},
    )
    values.update(fields)
    return Job(**values)


def test_records_round_trip_and_filter(store: JobStore) -> None:
    store.add(job(1))
    store.add(job(2, owner="bob"))
    assert store.get(f"{1:032x}") == job(1, created=store.get(f"{1:032x}").created)
    assert store.get(f"{1:032x}", owner="bob") is None  # another user's job is unknown
    assert [j.id for j in store.list(owner="alice")] == [f"{1:032x}"]
    assert [j.id for j in store.list()] == [f"{2:032x}", f"{1:032x}"]  # newest first
    assert store.count_by_state() == {QUEUED: 2, RUNNING: 0, SUCCEEDED: 0, FAILED: 0, CANCELLED: 0}
    assert store.finish(f"{2:032x}", SUCCEEDED, result={"auc": 0.9})
    assert not store.finish(f"{2:032x}", FAILED)  # finished once
    assert store.get(f"{2:032x}").result == {"auc": 0.9}


def test_claim_is_atomic_and_uids_are_never_shared(store: JobStore) -> None:
    """Twelve threads race to claim six jobs with three uids: each job is claimed once, and at no time do two
    running jobs hold one uid."""
    for n in range(6):
        store.add(job(n))
    uids = range(70000, 70003)
    claimed: list[Job] = []
    waited = []
    barrier = threading.Barrier(12)

    def race(n: int) -> None:
        barrier.wait()
        try:
            got = store.claim(f"{n % 6:032x}", f"w:{n}", uids)
        except NoFreeIdentityError:
            waited.append(n)
            return
        if got is not None:
            claimed.append(got)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 3  # three uids, three running jobs; the others wait queued
    assert len({j.id for j in claimed}) == 3 and sorted(j.uid for j in claimed) == list(uids)
    assert store.count_by_state()[RUNNING] == 3 and store.count_by_state()[QUEUED] == 3
    assert waited  # some claimers found every uid taken
    store.finish(claimed[0].id, SUCCEEDED)
    free = claimed[0].uid
    next_job = next(j.id for j in store.list(state=QUEUED))
    assert store.claim(next_job, "w:x", uids).uid == free  # a finished job's uid is free again
    assert store.claim(next_job, "w:y") is None  # not queued any more


def test_the_database_refuses_two_running_jobs_on_one_uid(store: JobStore) -> None:
    store.add(job(1))
    store.add(job(2))
    store.claim(f"{1:032x}", "w:1", range(70000, 70001))
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as db:
        db.execute(
            sa.text("UPDATE jobs SET state = 'running', uid = 70000 WHERE id = :id"), {"id": f"{2:032x}"}
        )


def test_cancel_requeue_and_interrupted(store: JobStore) -> None:
    for n in range(3):
        store.add(job(n))
    assert store.request_cancel(f"{0:032x}").state == CANCELLED  # queued: cancelled at once
    store.claim(f"{1:032x}", "w:1")
    assert not store.heartbeat(f"{1:032x}")
    running = store.request_cancel(f"{1:032x}")
    assert running.state == RUNNING and running.cancel_requested
    assert store.heartbeat(f"{1:032x}")  # the worker (on any machine) learns it with its next beat
    store.claim(f"{2:032x}", "w:2", range(70000, 70002))
    assert store.requeue(f"{2:032x}", "its worker was lost")
    again = store.get(f"{2:032x}")
    assert (again.state, again.uid, again.worker, again.error) == (QUEUED, None, None, "its worker was lost")
    store.claim(f"{2:032x}", "w:3")
    assert store.fail_interrupted(lambda j: j.worker == "w:3", "lost") == [f"{2:032x}"]
    assert store.get(f"{2:032x}").state == FAILED


def test_worker_heartbeats_expire(store: JobStore) -> None:
    store.worker_beat("h1:1", "h1", "1.0", running=1)
    store.worker_beat("h2:2", "h2", "1.0", running=0)
    store.worker_beat("h1:1", "h1", "1.0", running=0)  # a second beat updates
    assert [(w.id, w.running) for w in store.live_workers(60)] == [("h1:1", 0), ("h2:2", 0)]
    with store.engine.begin() as db:
        db.execute(sa.text("UPDATE workers SET heartbeat = :t WHERE id = 'h2:2'"), {"t": time.time() - 120})
    assert [w.id for w in store.live_workers(60)] == ["h1:1"]
    store.worker_gone("h1:1")
    assert store.live_workers(60) == []


def test_schema_is_at_head_and_matches_the_code(store: JobStore) -> None:
    assert current(store.engine) == head()
    inspector = sa.inspect(store.engine)
    for table in metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys())
    JobStore(store.url).dispose()  # opening it again migrates nothing and keeps the jobs


PRE_ALEMBIC_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, model_name TEXT NOT NULL,
    state TEXT NOT NULL, resources TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    heartbeat REAL, worker TEXT, error TEXT, result TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL DEFAULT '{}'%s);
CREATE INDEX jobs_owner ON jobs (owner, created);
CREATE INDEX jobs_state ON jobs (state);
"""


@pytest.mark.parametrize("with_uid", [False, True], ids=["before-uid", "with-uid"])
def test_an_existing_sqlite_store_keeps_its_jobs(tmp_path: Path, with_uid: bool) -> None:
    """A jobs.db written by the store before alembic (with or without today's uid column) is migrated in
    place: its jobs are all there, unchanged, and new ones are claimed with uids."""
    path = tmp_path / "jobs.db"
    db = sqlite3.connect(path)
    db.executescript(PRE_ALEMBIC_SCHEMA % (", uid INTEGER" if with_uid else ""))
    db.execute(
        "INSERT INTO jobs (id, owner, name, model_name, state, resources, created, result) VALUES "
        "(?, 'alice', 'old', 'alice.old', 'succeeded', '{\"cpus\": 1}', 1.5, '{\"auc\": 0.8}')",
        (f"{9:032x}",),
    )
    db.commit()
    db.close()
    store = JobStore(path)
    old = store.get(f"{9:032x}")
    assert (old.owner, old.state, old.resources, old.result, old.created) == (
        "alice",
        SUCCEEDED,
        {"cpus": 1},
        {"auc": 0.8},
        1.5,
    )
    assert current(store.engine) == head()
    store.add(job(1))
    assert store.claim(f"{1:032x}", "w:1", range(70000, 70001)).uid == 70000
    assert path.stat().st_mode & 0o077 == 0
