"""The job store: one SQLite file (``DATA_DIR/jobs.db``, WAL mode) shared by the API and the workers.

It is the truth about every job and survives restarts. A job runs once because a worker must first *claim*
it (queued → running, one atomic UPDATE); the same transaction gives it a uid of the reserved range that no
other running job holds, so two jobs never share an identity.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
STATES = (QUEUED, RUNNING, *FINISHED_STATES)


def now() -> float:
    return time.time()


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    owner: str
    name: str
    model_name: str
    state: str
    resources: dict[str, Any]
    created: float
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    worker: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    request: dict[str, Any] = field(default_factory=dict)
    uid: int | None = None  # the job's own uid (and gid) while it runs as root's worker allots them

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED_STATES

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "model_name": self.model_name,
            "state": self.state,
            "resources": self.resources,
            "created": iso(self.created),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "error": self.error,
            "result": self.result,
            "cancel_requested": self.cancel_requested,
        }


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    model_name TEXT NOT NULL,
    state TEXT NOT NULL,
    resources TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    heartbeat REAL,
    worker TEXT,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL DEFAULT '{}',
    uid INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


class NoFreeIdentityError(RuntimeError):
    """Every uid of the reserved range belongs to a running job."""


class JobStore:
    """Job records in SQLite (WAL mode): one short transaction per call, safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "uid" not in columns:  # a store made before jobs had their own identities
                db.execute("ALTER TABLE jobs ADD COLUMN uid INTEGER")
        finally:
            db.close()
        # Everyone's jobs are in here: no job may read it (SQLite gives -wal and -shm the file's mode).
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                Path(f"{path}{suffix}").chmod(0o600)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def add(self, job: Job) -> None:
        row = asdict(job)
        for key in ("resources", "result", "request"):
            row[key] = json.dumps(row[key])
        row["cancel_requested"] = int(job.cancel_requested)
        with self._connect() as db:
            db.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})",  # noqa: S608 - our columns
                row,
            )

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        query, args = "SELECT * FROM jobs WHERE id = ?", [job_id]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        with self._connect() as db:
            row = db.execute(query, args).fetchone()
        return _job(row) if row else None

    def list(self, owner: str | None = None, state: str | None = None, limit: int = 1000) -> list[Job]:
        clauses, args = [], []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            query = f"SELECT * FROM jobs {where} ORDER BY created DESC LIMIT ?"  # noqa: S608 - fixed clauses
            rows = db.execute(query, [*args, limit])
            return [_job(row) for row in rows.fetchall()]

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record; False when there is none, or the job has not finished."""
        with self._connect() as db:
            cursor = db.execute(
                "DELETE FROM jobs WHERE id = ? AND state IN (?, ?, ?)", [job_id, *FINISHED_STATES]
            )
            return cursor.rowcount > 0

    def claim(self, job_id: str, worker: str, uids: range | None = None) -> Job | None:
        """queued → running for exactly one worker; None when the job is not (or no longer) queued.

        With ``uids``, the job also gets the lowest of them that no running job holds, in the same
        transaction; ``NoFreeIdentityError`` when every one is taken.
        """
        stamp = now()
        with self._connect() as db:
            uid = None
            if uids is not None:
                rows = db.execute("SELECT uid FROM jobs WHERE state = ? AND uid IS NOT NULL", (RUNNING,))
                taken = {row[0] for row in rows}
                uid = next((candidate for candidate in uids if candidate not in taken), None)
                if uid is None:
                    raise NoFreeIdentityError(f"all {len(uids)} job uids are in use by running jobs")
            changed = db.execute(
                "UPDATE jobs SET state = ?, started = ?, heartbeat = ?, worker = ?, uid = ? "
                "WHERE id = ? AND state = ?",
                (RUNNING, stamp, stamp, worker, uid, job_id, QUEUED),
            ).rowcount
        return self.get(job_id) if changed else None

    def heartbeat(self, job_id: str) -> bool:
        """Mark a running job alive; returns whether a cancel was requested."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ? AND state = ?", (now(), job_id, RUNNING))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def finish(
        self,
        job_id: str,
        state: str,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        only_from: tuple[str, ...] = (QUEUED, RUNNING),
    ) -> bool:
        """Move an unfinished job to a finished state; False when it was already finished (or elsewhere)."""
        assert state in FINISHED_STATES
        marks = ", ".join("?" * len(only_from))
        with self._connect() as db:
            changed = db.execute(
                f"UPDATE jobs SET state = ?, finished = ?, error = ?, result = ? "  # noqa: S608 - placeholders
                f"WHERE id = ? AND state IN ({marks})",
                (state, now(), error, json.dumps(result) if result is not None else None, job_id, *only_from),
            ).rowcount
        return bool(changed)

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled now; a running one is flagged for its worker, which stops it."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, cancel_requested = 1 "
                "WHERE id = ? AND state = ?",
                (CANCELLED, now(), "cancelled before it started", job_id, QUEUED),
            )
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?", (job_id, RUNNING))
        return self.get(job_id)

    def fail_interrupted(self, is_orphaned: Callable[[Job], bool], reason: str) -> list[str]:
        """Mark failed every running job for which ``is_orphaned(job)`` holds; returns their ids."""
        failed = []
        for job in self.list(state=RUNNING, limit=1_000_000):
            if is_orphaned(job) and self.finish(job.id, FAILED, error=reason, only_from=(RUNNING,)):
                failed.append(job.id)
        return failed


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    for key in ("resources", "result", "request"):
        values[key] = json.loads(values[key]) if values[key] is not None else None
    values["request"] = values["request"] or {}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)
