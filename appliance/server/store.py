"""The job store: the truth about every job, shared by the API and the workers, and surviving restarts.

One piece although above 400 lines: the tables and the transactions over them are one schema, and each
query reads best beside the table it touches (the claim's locking beside the uid index, say).

One code path (SQLAlchemy Core) serves both backends: the embedded default, one SQLite file
(``DATA_DIR/jobs.db``, WAL mode), and PostgreSQL (``store_url: postgresql+psycopg://...``) when workers run on
other machines. The schema is alembic's (``appliance/server/migrations``), brought up to date when a store
opens. A job runs once because a worker must first *claim* it (queued → running, one atomic UPDATE ... WHERE
state = 'queued'); the same transaction gives it a uid of the reserved range that no other running job holds
(claims are serialised: SQLite's BEGIN IMMEDIATE, PostgreSQL's transaction-scoped advisory lock, and a unique
index on the uids of running jobs backs that up), so two jobs never share an identity, whichever machine runs
them. Workers write heartbeats to ``workers``, which /health and /metrics read.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
STATES = (QUEUED, RUNNING, *FINISHED_STATES)
# Any fixed number: the key of PostgreSQL's advisory lock that serialises claims (and migrations).
CLAIM_LOCK_KEY = 0x4D4C4153
MIGRATION_LOCK_KEY = CLAIM_LOCK_KEY + 1
VERSION_LOCK_KEY = CLAIM_LOCK_KEY + 2
DELIVERY_LOCK_KEY = CLAIM_LOCK_KEY + 3
INFO_LOCK_KEY = CLAIM_LOCK_KEY + 4


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


@dataclass(frozen=True)
class WorkerBeat:
    """One worker process as it last reported itself."""

    id: str
    host: str
    started: float
    heartbeat: float
    version: str
    running: int
    gpus: int = 0


# The tables as the code reads them; the migrations create them (and must agree: tests/server/test_store.py).
metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("resources", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("heartbeat", sa.Float),
    sa.Column("worker", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
    sa.Column("request", sa.Text, nullable=False, server_default="{}"),
    sa.Column("uid", sa.Integer),
)
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("version", sa.Text, nullable=False, server_default=""),
    sa.Column("running", sa.Integer, nullable=False, server_default="0"),
    sa.Column("gpus", sa.Integer, nullable=False, server_default="0"),
)
model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("high", sa.Integer, nullable=False),
)
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("replica", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("archive", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_try", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("delivered", sa.Float),
)
service_info = sa.Table(
    "service_info",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
job_tasks = sa.Table(
    "job_tasks",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("task", sa.Integer, primary_key=True),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("address", sa.Text),
    sa.Column("joined", sa.Float, nullable=False),
    sa.Column("finished", sa.Float),
)
JSON_COLUMNS = ("resources", "result", "request")
PENDING, DELIVERED, REFUSED = "pending", "delivered", "refused"


@dataclass(frozen=True)
class Delivery:
    """One model version on its way to one TFaaS replica."""

    id: int
    model: str
    version: int
    replica: str
    job_id: str
    archive: str
    state: str
    attempts: int
    next_try: float
    lease_until: float | None
    error: str | None
    delivered: float | None


class NoFreeIdentityError(RuntimeError):
    """Every uid of the reserved range belongs to a running job."""


class TaskOfThisWorkerError(RuntimeError):
    """This worker already runs a task of the job: another worker must take this one."""


def store_url(target: Path | str) -> str:
    """A SQLAlchemy URL: a path is the embedded SQLite file, a string is taken as a URL."""
    if isinstance(target, Path):
        return f"sqlite:///{target.resolve()}"
    return target


def make_engine(url: str) -> Engine:
    """An engine whose transactions lock what a claim needs: BEGIN IMMEDIATE on SQLite (one writer at a
    time, waiting up to 30 s), ordinary transactions with ``pool_pre_ping`` on PostgreSQL."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, poolclass=sa.pool.NullPool)

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)


class JobStore:
    """Job records and worker heartbeats: one short transaction per call, safe across threads, processes and
    (on PostgreSQL) machines."""

    def __init__(self, target: Path | str) -> None:
        from appliance.server.migrations import upgrade

        self.url = store_url(target)
        self.path = target if isinstance(target, Path) else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.url)
        self.postgres = self.engine.dialect.name == "postgresql"
        upgrade(self.engine, self.path)
        if self.path is not None:
            # Everyone's jobs are in here: no job may read it (SQLite gives -wal and -shm the file's mode).
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    Path(f"{self.path}{suffix}").chmod(0o600)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as db:
            yield db

    def add(self, job: Job) -> None:
        row = asdict(job)
        for key in JSON_COLUMNS:
            row[key] = json.dumps(row[key])
        row["cancel_requested"] = int(job.cancel_requested)
        with self._transaction() as db:
            db.execute(jobs.insert().values(**row))

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        query = jobs.select().where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._transaction() as db:
            row = db.execute(query).mappings().first()
        return _job(row) if row else None

    def list(self, owner: str | None = None, state: str | None = None, limit: int = 1000) -> list[Job]:
        query = jobs.select().order_by(jobs.c.created.desc()).limit(limit)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if state is not None:
            query = query.where(jobs.c.state == state)
        with self._transaction() as db:
            return [_job(row) for row in db.execute(query).mappings().all()]

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record; False when there is none, or the job has not finished."""
        query = jobs.delete().where(jobs.c.id == job_id, jobs.c.state.in_(FINISHED_STATES))
        with self._transaction() as db:
            deleted = db.execute(query).rowcount > 0
            if deleted:
                db.execute(job_tasks.delete().where(job_tasks.c.job_id == job_id))
            return deleted

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state named, zeros included)."""
        with self._transaction() as db:
            rows = db.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)).all()
        return {state: 0 for state in STATES} | {state: count for state, count in rows}

    def claim(self, job_id: str, worker: str, uids: range | None = None) -> Job | None:
        """queued → running for exactly one worker; None when the job is not (or no longer) queued.

        With ``uids``, the job also gets the lowest of them that no running job holds, in the same
        transaction; ``NoFreeIdentityError`` when every one is taken.
        """
        stamp = now()
        with self._transaction() as db:
            self._serialise(db, CLAIM_LOCK_KEY)  # claims one after the other: two never pick one free uid
            claimed = _claim_queued(db, job_id, worker, uids, stamp)
        return _job(claimed) if claimed else None

    def claim_task(self, job_id: str, task: int, worker: str, uids: range | None = None) -> Job | None:
        """One task of a multi-worker job for ``worker``: the first task to come claims the job itself
        (queued → running, its uid), the others join it and share its uid, which no other running job holds on
        any machine. None when the task is taken already or the job is no longer queued or running;
        ``TaskOfThisWorkerError`` when this worker runs another task of the job (both need its cores)."""
        stamp = now()
        with self._transaction() as db:
            self._serialise(db, CLAIM_LOCK_KEY)
            rows = db.execute(
                sa.select(job_tasks.c.task, job_tasks.c.worker).where(job_tasks.c.job_id == job_id)
            )
            taken = {row.task: row.worker for row in rows}
            if task in taken:
                return None
            if worker in taken.values():
                raise TaskOfThisWorkerError(f"worker {worker} runs task(s) of job {job_id} already")
            row = db.execute(jobs.select().where(jobs.c.id == job_id)).mappings().first()
            if row is None or row["state"] not in (QUEUED, RUNNING) or row["cancel_requested"]:
                return None
            if row["state"] == QUEUED:
                row = _claim_queued(db, job_id, worker, uids, stamp)
            db.execute(job_tasks.insert().values(job_id=job_id, task=task, worker=worker, joined=stamp))
        return _job(row) if row else None

    def register_task(self, job_id: str, task: int, address: str) -> None:
        """The address (host:port) the other tasks reach this task at."""
        with self._transaction() as db:
            db.execute(
                job_tasks.update()
                .where(job_tasks.c.job_id == job_id, job_tasks.c.task == task)
                .values(address=address)
            )

    def task_addresses(self, job_id: str) -> dict[int, str]:
        """The registered tasks' addresses, by task index."""
        query = sa.select(job_tasks.c.task, job_tasks.c.address).where(
            job_tasks.c.job_id == job_id, job_tasks.c.address.is_not(None)
        )
        with self._transaction() as db:
            return {row.task: row.address for row in db.execute(query)}

    def task_workers(self, job_id: str) -> dict[int, str]:
        """Which worker took each task of the job."""
        query = sa.select(job_tasks.c.task, job_tasks.c.worker).where(job_tasks.c.job_id == job_id)
        with self._transaction() as db:
            return {row.task: row.worker for row in db.execute(query)}

    def finish_task(self, job_id: str, task: int, host: str) -> bool:
        """A task ended; whether it was the last of its job on ``host`` (which then closes the directory)."""
        with self._transaction() as db:
            self._serialise(db, CLAIM_LOCK_KEY)
            db.execute(
                job_tasks.update()
                .where(job_tasks.c.job_id == job_id, job_tasks.c.task == task)
                .values(finished=now())
            )
            left = db.execute(
                sa.select(sa.func.count()).where(
                    job_tasks.c.job_id == job_id,
                    job_tasks.c.worker.like(f"{host}:%"),
                    job_tasks.c.finished.is_(None),
                )
            ).scalar()
        return not left

    def running_tasks(self) -> list[tuple[str, int, str]]:
        """(job id, task, worker) of every unfinished task of a running job."""
        query = (
            sa.select(job_tasks.c.job_id, job_tasks.c.task, job_tasks.c.worker)
            .join(jobs, jobs.c.id == job_tasks.c.job_id)
            .where(jobs.c.state == RUNNING, job_tasks.c.finished.is_(None))
        )
        with self._transaction() as db:
            return [(row.job_id, row.task, row.worker) for row in db.execute(query)]

    def job_stopped(self, job_id: str) -> bool:
        """Mark the job alive; whether it was cancelled or finished meanwhile (another task failed it, or
        its chief finished it): the other tasks of a multi-worker job stop then."""
        with self._transaction() as db:
            db.execute(
                jobs.update().where(jobs.c.id == job_id, jobs.c.state == RUNNING).values(heartbeat=now())
            )
            row = db.execute(
                sa.select(jobs.c.state, jobs.c.cancel_requested).where(jobs.c.id == job_id)
            ).first()
        return row is None or row.state != RUNNING or bool(row.cancel_requested)

    def heartbeat(self, job_id: str) -> bool:
        """Mark a running job alive; returns whether a cancel was requested."""
        with self._transaction() as db:
            db.execute(
                jobs.update().where(jobs.c.id == job_id, jobs.c.state == RUNNING).values(heartbeat=now())
            )
            flag = db.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
        return bool(flag)

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
        with self._transaction() as db:
            changed = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state.in_(only_from))
                .values(
                    state=state,
                    finished=now(),
                    error=error,
                    result=json.dumps(result) if result is not None else None,
                )
            ).rowcount
        return bool(changed)

    def requeue(self, job_id: str, reason: str) -> bool:
        """running → queued (a worker lost mid-job, the job allowed to run again); the reason is kept."""
        with self._transaction() as db:
            changed = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state == RUNNING)
                .values(state=QUEUED, started=None, heartbeat=None, worker=None, uid=None, error=reason)
            ).rowcount
        return bool(changed)

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled now; a running one is flagged for its worker (on any machine), which
        reads the flag with its next heartbeat and stops it."""
        with self._transaction() as db:
            db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
                .values(
                    state=CANCELLED, finished=now(), error="cancelled before it started", cancel_requested=1
                )
            )
            db.execute(
                jobs.update().where(jobs.c.id == job_id, jobs.c.state == RUNNING).values(cancel_requested=1)
            )
        return self.get(job_id)

    def fail_interrupted(self, is_orphaned: Callable[[Job], bool], reason: str) -> list[str]:
        """Mark failed every running job for which ``is_orphaned(job)`` holds; returns their ids."""
        failed = []
        for job in self.list(state=RUNNING, limit=1_000_000):
            if is_orphaned(job) and self.finish(job.id, FAILED, error=reason, only_from=(RUNNING,)):
                failed.append(job.id)
        return failed

    # -- workers -------------------------------------------------------------------------------------------

    def worker_beat(self, worker: str, host: str, version: str, running: int, gpus: int = 0) -> None:
        """A worker says it is alive, with the GPUs it can give jobs (an insert the first time, an update
        after)."""
        stamp = now()
        with self._transaction() as db:
            updated = db.execute(
                workers.update()
                .where(workers.c.id == worker)
                .values(heartbeat=stamp, version=version, running=running, gpus=gpus)
            ).rowcount
            if not updated:
                db.execute(
                    workers.insert().values(
                        id=worker,
                        host=host,
                        started=stamp,
                        heartbeat=stamp,
                        version=version,
                        running=running,
                        gpus=gpus,
                    )
                )

    def worker_gone(self, worker: str) -> None:
        """A worker that stops cleanly leaves the list at once."""
        with self._transaction() as db:
            db.execute(workers.delete().where(workers.c.id == worker))

    def live_workers(self, stale_after_s: float) -> list[WorkerBeat]:
        """Workers heard from within ``stale_after_s``; older rows are removed on the way."""
        limit = now() - stale_after_s
        with self._transaction() as db:
            db.execute(workers.delete().where(workers.c.heartbeat < limit - 24 * 3600))  # long dead
            rows = db.execute(workers.select().where(workers.c.heartbeat >= limit).order_by(workers.c.id))
            return [WorkerBeat(**row) for row in rows.mappings().all()]

    def set_info(self, key: str, value: str) -> None:
        with self._transaction() as db:
            self._serialise(db, INFO_LOCK_KEY)
            if not db.execute(
                service_info.update().where(service_info.c.key == key).values(value=value)
            ).rowcount:
                db.execute(service_info.insert().values(key=key, value=value))

    def info(self, key: str) -> str | None:
        with self._transaction() as db:
            return db.execute(sa.select(service_info.c.value).where(service_info.c.key == key)).scalar()

    # -- models across machines ------------------------------------------------------------------------------

    def _serialise(self, db: Connection, key: int) -> None:
        """On PostgreSQL, one such transaction at a time (SQLite's BEGIN IMMEDIATE already is)."""
        if self.postgres:
            db.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    def publish_version(self, model: str, job_id: str, archive: str, replicas: list[str]) -> int:
        """The model's next version, handed out once for every replica, and one delivery per replica."""
        stamp = now()
        with self._transaction() as db:
            self._serialise(db, VERSION_LOCK_KEY)
            high = db.execute(sa.select(model_versions.c.high).where(model_versions.c.name == model)).scalar()
            version = (high or 0) + 1
            if high is None:
                db.execute(model_versions.insert().values(name=model, high=version))
            else:
                db.execute(model_versions.update().where(model_versions.c.name == model).values(high=version))
            for replica in replicas:
                db.execute(
                    deliveries.insert().values(
                        model=model,
                        version=version,
                        replica=replica,
                        job_id=job_id,
                        archive=archive,
                        state=PENDING,
                        attempts=0,
                        next_try=stamp,
                    )
                )
        return version

    def claim_delivery(self, lease_s: float) -> Delivery | None:
        """A due delivery for this caller alone (for ``lease_s``): per replica and model, the lowest pending
        version only, so that each replica receives a model's versions in order."""
        stamp = now()
        earlier = deliveries.alias("earlier")
        blocked = (
            sa.select(earlier.c.id)
            .where(
                earlier.c.model == deliveries.c.model,
                earlier.c.replica == deliveries.c.replica,
                earlier.c.state == PENDING,
                earlier.c.version < deliveries.c.version,
            )
            .exists()
        )
        with self._transaction() as db:
            self._serialise(db, DELIVERY_LOCK_KEY)
            row = (
                db.execute(
                    deliveries.select()
                    .where(
                        deliveries.c.state == PENDING,
                        deliveries.c.next_try <= stamp,
                        sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < stamp),
                        ~blocked,
                    )
                    .order_by(deliveries.c.next_try, deliveries.c.id)
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            db.execute(
                deliveries.update().where(deliveries.c.id == row["id"]).values(lease_until=stamp + lease_s)
            )
        return Delivery(**{**row, "lease_until": stamp + lease_s})

    def delivery_done(self, delivery_id: int) -> None:
        with self._transaction() as db:
            db.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id)
                .values(state=DELIVERED, delivered=now(), lease_until=None, error=None)
            )

    def delivery_failed(self, delivery_id: int, error: str, retry_in_s: float | None) -> None:
        """Try again in ``retry_in_s`` (the replica was down), or never (None: it refused the bundle)."""
        with self._transaction() as db:
            values: dict[str, Any] = {
                "error": error,
                "lease_until": None,
                "attempts": deliveries.c.attempts + 1,
            }
            if retry_in_s is None:
                values["state"] = REFUSED
            else:
                values["next_try"] = now() + retry_in_s
            db.execute(deliveries.update().where(deliveries.c.id == delivery_id).values(**values))

    def list_deliveries(self, job_id: str | None = None, state: str | None = None) -> list[Delivery]:
        query = sa.select(deliveries).order_by(deliveries.c.id)
        if job_id is not None:
            query = query.where(deliveries.c.job_id == job_id)
        if state is not None:
            query = query.where(deliveries.c.state == state)
        with self._transaction() as db:
            return [Delivery(**row) for row in db.execute(query).mappings().all()]

    def worker_heartbeat(self, worker: str) -> float | None:
        with self._transaction() as db:
            return db.execute(sa.select(workers.c.heartbeat).where(workers.c.id == worker)).scalar()


def _claim_queued(db: Connection, job_id: str, worker: str, uids: range | None, stamp: float) -> Any:
    """Inside a claim's transaction: queued → running for ``worker`` with the lowest of ``uids`` no running
    job holds; the job's row, or None when it is no longer queued. ``NoFreeIdentityError`` when every uid is
    taken."""
    uid = None
    if uids is not None:
        running = sa.select(jobs.c.uid).where(jobs.c.state == RUNNING, jobs.c.uid.is_not(None))
        taken = set(db.execute(running).scalars())
        uid = next((candidate for candidate in uids if candidate not in taken), None)
        if uid is None:
            raise NoFreeIdentityError(f"all {len(uids)} job uids are in use by running jobs")
    return (
        db.execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
            .values(state=RUNNING, started=stamp, heartbeat=stamp, worker=worker, uid=uid)
            .returning(*jobs.c)
        )
        .mappings()
        .first()
    )


def _job(row: Any) -> Job:
    values = dict(row)
    for key in JSON_COLUMNS:
        values[key] = json.loads(values[key]) if values[key] is not None else None
    values["request"] = values["request"] or {}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)
