"""Training jobs: the persistent job store, the huey queue, and the worker that runs each job in a subprocess.

The store is one SQLite file (``DATA_DIR/jobs.db``) shared by the API and the workers; it is the truth about
every job and survives restarts. The queue is huey: ``SqliteHuey`` in ``DATA_DIR/queue.db`` by default,
or ``RedisHuey`` when ``queue_url`` names a Redis broker, so several worker machines can share it. A queue
message only carries a job id; a job runs once because a worker must first *claim* it (queued → running,
one atomic UPDATE), which also makes duplicate or stale messages harmless.

Each job runs ``python -m appliance train ...`` as an argv list (never a shell) in its own working directory:

    prlimit --as=MEMORY --cpu=CPUS*WALL -- taskset --cpu-list CORES
        setpriv --pdeathsig KILL [--reuid U --regid G --clear-groups] -- python -m appliance train ...

``setpriv`` drops to the unprivileged job user (only when the worker runs as root) and makes the kernel kill
the job if its worker dies, so a killed worker never leaves an orphan training behind. ``prlimit`` caps the
address space (the memory request) and CPU seconds (a backstop); ``taskset`` pins the job to as many cores as
it asked for, and the thread pools of TensorFlow and BLAS are sized to match. Wall time is enforced by the
worker's own timer (SIGTERM to the job's process group, SIGKILL after ``kill_grace_s``). PID 1 is not
systemd on every host this runs on, so transient ``systemd-run`` scopes are not used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pwd
import re
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey

import appliance
from appliance.server.settings import Settings
from servicecore import atomic
from servicecore.errors import BadInputError

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
TASK_NAME = "mlaas4hep.run_job"
MODEL_ARCHIVE = "model.tar.gz"
LOG_FILE = "job.log"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"
BUNDLE_DIR = "bundle"
WORK_DIR = "work"  # the only part of a job directory the job itself may write
PLOTS_DIR = "plots"
PLOTS = ("roc", "loss")
POLL_S = 0.5
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# Memory in MiB; a bare number is MiB.
MEMORY_UNITS = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def now() -> float:
    return time.time()


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


# -- requests for resources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    memory_mb: int
    cpus: int
    wall_time_s: int
    device: str = "cpu"

    @classmethod
    def from_request(cls, request: Mapping[str, Any], settings: Settings) -> Resources:
        """``memory`` ("3gb", "512MiB", a number of MiB), ``cpus`` and ``wall_time`` ("2h", seconds),
        ``device`` ("cpu" or "gpu"), each checked against the server's limits."""
        memory = _quantity(request.get("memory"), MEMORY_UNITS, "memory", settings.default_memory_mb)
        cpus_value = request.get("cpus")
        if cpus_value in (None, ""):
            cpus = float(settings.default_cpus)
        else:
            try:
                cpus = float(cpus_value)
            except (TypeError, ValueError):
                raise BadInputError(f"cpus must be a number, got {cpus_value!r}") from None
            if isinstance(cpus_value, bool) or not math.isfinite(cpus) or cpus <= 0:
                raise BadInputError(f"cpus must be a positive number, got {cpus_value!r}")
        wall = _quantity(request.get("wall_time"), DURATION_UNITS, "wall_time", settings.default_wall_time_s)
        device = request.get("device") or "cpu"
        if device not in ("cpu", "gpu"):
            raise BadInputError(f'device must be "cpu" or "gpu", got {device!r}')
        if device == "gpu" and not settings.gpu_jobs:
            raise BadInputError('this server runs no GPU jobs: ask for "device": "cpu"')
        for what, asked, limit, unit in (
            ("memory", memory, settings.max_memory_mb, " MiB"),
            ("cpus", cpus, settings.max_cpus, ""),
            ("wall_time", wall, settings.max_wall_time_s, " s"),
        ):
            if asked > limit:
                raise BadInputError(
                    f"{what} {_number(asked)}{unit} is above this server's limit of {limit}{unit}"
                )
        return cls(
            memory_mb=math.ceil(memory), cpus=math.ceil(cpus), wall_time_s=math.ceil(wall), device=device
        )


def _quantity(value: Any, units: Mapping[str, float], what: str, default: float) -> float:
    if value in (None, ""):
        return float(default)
    if isinstance(value, bool):
        raise BadInputError(f"{what} must be a number or a string like '2gb', got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if match is None:
            raise BadInputError(f"{what} must be a number or a string like '2gb', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
        unit = unit.removesuffix("ib").removesuffix("b") if what == "memory" else unit
    if unit not in units:
        raise BadInputError(
            f"{what}: unknown unit {unit!r} in {value!r} (known: {', '.join(u for u in units if u)})"
        )
    quantity = number * units[unit]
    if not math.isfinite(quantity) or quantity <= 0:
        raise BadInputError(f"{what} must be positive, got {value!r}")
    return quantity


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


# -- names ------------------------------------------------------------------------------------------------


def new_job_id() -> str:
    return secrets.token_hex(16)


# -- the job store ----------------------------------------------------------------------------------------


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
    request TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


class JobStore:
    """Job records in SQLite (WAL mode): one short transaction per call, safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()

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

    def claim(self, job_id: str, worker: str) -> Job | None:
        """queued → running for exactly one worker; None when the job is not (or no longer) queued."""
        stamp = now()
        with self._connect() as db:
            changed = db.execute(
                "UPDATE jobs SET state = ?, started = ?, heartbeat = ?, worker = ? "
                "WHERE id = ? AND state = ?",
                (RUNNING, stamp, stamp, worker, job_id, QUEUED),
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

    def fail_interrupted(self, is_orphaned: Any, reason: str) -> list[str]:
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


# -- the queue --------------------------------------------------------------------------------------------


def make_huey(settings: Settings) -> Huey:
    """The one switch between the embedded queue and a shared broker: ``queue_url``."""
    if settings.queue_url:
        return RedisHuey("mlaas4hep", results=False, url=settings.queue_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("mlaas4hep", results=False, filename=str(settings.queue_db))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobQueue:
    """The store, the huey instance and the task that runs a job; the API enqueues, workers consume."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.job_db)
        self.huey = make_huey(settings)
        self._task = self.huey.task(name=TASK_NAME)(self.run_job)

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.settings.jobs_dir / job_id

    def submit(self, job: Job) -> None:
        """Record the job (its directory is already in place) and queue it."""
        self.store.add(job)
        try:
            self.huey.enqueue(self._task.s(job.id, id=job.id))
        except Exception as err:
            self.store.finish(job.id, FAILED, error=f"the job queue refused the job: {err}")
            raise

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.request_cancel(job_id)
        if job is not None and job.state == CANCELLED:
            self.huey.revoke_by_id(job_id)
        return job

    def reap_stale(self) -> list[str]:
        """Running jobs whose worker went silent (dead and not restarted) become failed."""
        limit = now() - self.settings.stale_after_s
        return self.store.fail_interrupted(
            lambda job: (job.heartbeat or 0) < limit,
            f"the worker running this job stopped answering for {self.settings.stale_after_s:.0f} s",
        )

    def recover(self) -> dict[str, list[str]]:
        """At worker start: fail the jobs a dead worker on this host left running, and queue again the
        queued jobs that have no message in the queue (so none waits forever)."""
        host = socket.gethostname()

        def orphaned(job: Job) -> bool:
            worker_host, _, pid = (job.worker or "").rpartition(":")
            return worker_host == host and not _alive(int(pid or 0))

        failed = self.store.fail_interrupted(
            orphaned, "interrupted: the worker stopped while the job was running; submit it again"
        )
        failed += self.reap_stale()
        pending = {task.id for task in self.huey.pending()}
        requeued = []
        for job in self.store.list(state=QUEUED, limit=1_000_000):
            if job.id not in pending:
                self.huey.enqueue(self._task.s(job.id, id=job.id))
                requeued.append(job.id)
        return {"failed": failed, "requeued": requeued}

    # -- the task ------------------------------------------------------------------------------------------

    def run_job(self, job_id: str) -> None:
        """The huey task: claim the job, run its training subprocess, record the outcome."""
        job = self.store.claim(job_id, worker_id())
        if job is None:
            return
        try:
            state, error, result = JobRun(self.settings, job, self.job_dir(job_id), self.store).run()
        except Exception as err:
            log.exception("job %s: internal error", job_id)
            state, error, result = FAILED, f"internal error of the worker: {err}", None
        self.store.finish(job_id, state, error=error, result=result, only_from=(RUNNING,))
        log.info("job %s: %s%s", job_id, state, f" ({error})" if error else "")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- one run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobUser:
    uid: int
    gid: int
    name: str


def job_user(settings: Settings) -> JobUser | None:
    """The user jobs run as: the configured one when the worker is root, else nobody else (no switch)."""
    if os.geteuid() != 0 or not settings.job_user:
        return None
    try:
        entry = pwd.getpwnam(settings.job_user)
    except KeyError:
        raise BadInputError(
            f"job user {settings.job_user!r} does not exist: create it (the appliance role does), or set "
            "MLAAS4HEP_JOB_USER to another unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        raise BadInputError(f"job user {settings.job_user!r} is root: jobs must run unprivileged")
    return JobUser(entry.pw_uid, entry.pw_gid, entry.pw_name)


class JobRun:
    """One execution of a job's training subprocess, with its limits, cancel checks and outcome."""

    def __init__(self, settings: Settings, job: Job, directory: Path, store: JobStore) -> None:
        self.settings = settings
        self.job = job
        self.directory = directory
        self.store = store
        self.resources = Resources(**job.resources)
        self.user = job_user(settings)

    def argv(self) -> list[str]:
        d, inputs = self.directory / WORK_DIR, self.directory / "inputs"
        request = self.job.request
        train = [
            self.settings.python or sys.executable, "-m", "appliance", "train",
            "--files", str(inputs / "files.txt"),
            "--labels", str(inputs / "labels.txt"),
            "--model", str(inputs / request["model_file"]),
            "--params", str(inputs / "params.json"),
            *(["--preproc", str(inputs / "preproc.json")] if request.get("preproc") else []),
            "--specs", str(d / "specs.json"),
            "--fout", str(d / BUNDLE_DIR),
            "--publish", str(self.settings.model_repository),
            "--name", self.job.model_name,
            "--progress-file", str(d / PROGRESS_FILE),
            "--quiet",
        ]  # fmt: skip
        r = self.resources
        limits = [
            "prlimit", f"--as={r.memory_mb * 1024 * 1024}", f"--cpu={r.cpus * r.wall_time_s + 60}", "--",
            "taskset", "--cpu-list", _cpu_list(r.cpus),
        ]  # fmt: skip
        # setpriv comes last, so that it is the job's own parent-death signal it sets and the user switch
        # happens right before the interpreter starts.
        return [*limits, *self._as_job_user(), *train]

    def _as_job_user(self) -> list[str]:
        launcher = ["setpriv", "--pdeathsig", "KILL"]
        if self.user is not None:
            launcher += ["--reuid", str(self.user.uid), "--regid", str(self.user.gid), "--clear-groups"]
        return [*launcher, "--"]

    def environment(self) -> dict[str, str]:
        threads = str(self.resources.cpus)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.directory / WORK_DIR),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(Path(appliance.__file__).resolve().parents[1]),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "2",
            "MPLCONFIGDIR": str(self.directory / WORK_DIR / ".matplotlib"),
        }
        # The XRootD client's settings and grid credentials of the host reach the job; nothing else does.
        env.update({k: v for k, v in os.environ.items() if k.startswith("XRD_") or k == "X509_USER_PROXY"})
        if self.resources.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.update(self.settings.job_env)
        return env

    def _prepare(self) -> None:
        # The job writes its bundle, progress and caches in work/ and publishes into the repository. The rest
        # of the job directory (inputs, log, result, archive, plots) stays the server's: the job reaches
        # its log and result only through the file descriptors it is given.
        work = self.directory / WORK_DIR
        work.mkdir(exist_ok=True)
        if self.user is not None:
            for path in (work, self.settings.model_repository):
                os.chown(path, self.user.uid, self.user.gid)

    def run(self) -> tuple[str, str | None, dict[str, Any] | None]:
        self.settings.model_repository.mkdir(parents=True, exist_ok=True)
        self._prepare()
        argv = self.argv()
        log_path, result_path = self.directory / LOG_FILE, self.directory / RESULT_FILE
        with log_path.open("ab") as log_file, result_path.open("wb") as stdout:
            log_file.write(_log_line(f"started on {worker_id()}: {' '.join(argv)}"))
            log_file.flush()
            process = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=log_file,
                start_new_session=True,
            )
            stopped_for = self._watch(process)
            code = process.returncode
            # Whatever the job left running in its session goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            log_file.write(_log_line(f"training exited with code {code}"))
        return self._outcome(code, stopped_for)

    def _watch(self, process: subprocess.Popen) -> str | None:
        """Wait for the process; stop it on cancel or at the wall-time limit. Returns why it was stopped."""
        deadline = time.monotonic() + self.resources.wall_time_s
        next_beat = 0.0
        stopped_for = None
        while True:
            try:
                process.wait(POLL_S)
                return stopped_for
            except subprocess.TimeoutExpired:
                pass
            if stopped_for is not None:
                continue
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.settings.heartbeat_s
                if self.store.heartbeat(self.job.id):
                    stopped_for = "cancelled"
            if stopped_for is None and time.monotonic() >= deadline:
                stopped_for = f"wall-time limit of {self.resources.wall_time_s} s exceeded"
            if stopped_for is not None:
                threading.Thread(
                    target=_terminate, args=(process, self.settings.kill_grace_s), daemon=True
                ).start()

    def _outcome(self, code: int, stopped_for: str | None) -> tuple[str, str | None, dict[str, Any] | None]:
        if stopped_for == "cancelled":
            return CANCELLED, "cancelled while running", None
        if stopped_for is not None:
            return FAILED, stopped_for, None
        if code == 0:
            try:
                result = json.loads((self.directory / RESULT_FILE).read_text().strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError) as err:
                return FAILED, f"training printed no result: {err}", None
            self._collect_bundle()
            return SUCCEEDED, None, result
        if code == EXIT_BAD_INPUT:
            return FAILED, f"bad input: {self._last_error()}", None
        if code < 0:
            name = signal.Signals(-code).name
            hint = (
                " (memory limit reached?)"
                if -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT)
                else ""
            )
            return FAILED, f"training was killed by {name}{hint}; see the logs", None
        return FAILED, f"training failed with exit code {code}: {self._last_error()}", None

    def _last_error(self) -> str:
        """The progress file's ``failed`` event, else the last line the training wrote on stderr."""
        with contextlib.suppress(OSError, IndexError, json.JSONDecodeError, UnicodeDecodeError):
            text = read_confined(self.directory / WORK_DIR, PROGRESS_FILE, max_bytes=1 << 20).decode()
            event = json.loads(text.strip().splitlines()[-1])
            if isinstance(event, dict) and event.get("stage") == "failed":
                return str(event["error"])
        with contextlib.suppress(OSError):
            lines = [
                line for line in (self.directory / LOG_FILE).read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith("[mlaas4hep ")
            ]  # fmt: skip
            if lines:
                return lines[-1].removeprefix("mlaas4hep train: error: ")
        return "no message; see the logs"

    def _collect_bundle(self) -> None:
        """Copy the plots out of work/ and archive the bundle into the server's part of the job directory.

        work/ belongs to the job, which may have planted links there: the plots are read without following
        any, and the archive is made by ``tar`` running as the job user, its output written by the worker.
        """
        plots = self.directory / PLOTS_DIR
        plots.mkdir(exist_ok=True)
        for name in PLOTS:
            with contextlib.suppress(OSError):
                data = read_confined(self.directory / WORK_DIR, BUNDLE_DIR, f"{name}.png", max_bytes=64 << 20)
                atomic.write_bytes(plots / f"{name}.png", data)
        archive = [
            "tar", "--create", "--gzip", "--file=-", f"--directory={self.directory / WORK_DIR}",
            f"--transform=s,^{BUNDLE_DIR},{self.job.model_name},",
            BUNDLE_DIR,
        ]  # fmt: skip
        fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".tar.gz", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                subprocess.run(
                    [*self._as_job_user(), *archive],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    check=True,
                    cwd=self.directory,
                    timeout=600,
                )
            Path(tmp).replace(self.directory / MODEL_ARCHIVE)
        finally:
            Path(tmp).unlink(missing_ok=True)


def _terminate(process: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _cpu_list(cpus: int) -> str:
    """The first ``cpus`` cores this worker may use (all of them when it asks for more than there are)."""
    allowed = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in allowed[: max(1, cpus)])


def _log_line(text: str) -> bytes:
    return f"[mlaas4hep {iso(now())}] {text}\n".encode()


def read_confined(base: Path, *parts: str, max_bytes: int, tail: bool = False) -> bytes:
    """Read ``base/parts...`` without following a link at any step below ``base``; only a regular file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    fds = [os.open(base, flags | os.O_DIRECTORY)]
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        fd = os.open(parts[-1], flags, dir_fd=fds[-1])
        fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{'/'.join(parts)} is not a regular file")
        if info.st_size > max_bytes and not tail:
            raise OSError(f"{'/'.join(parts)} is larger than {max_bytes} bytes")
        if tail:
            os.lseek(fd, max(0, info.st_size - max_bytes), os.SEEK_SET)
        chunks, left = [], max_bytes
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_progress(directory: Path, tail_bytes: int = 65_536) -> dict[str, Any]:
    """A summary of the job's progress file: the stage, epoch, events read and rate, the last loss."""
    try:
        text = read_confined(directory / WORK_DIR, PROGRESS_FILE, max_bytes=tail_bytes, tail=True)
    except OSError:
        return {}
    lines = text.decode(errors="replace").splitlines()
    summary: dict[str, Any] = {}
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                summary.update(
                    {k: event[k] for k in ("stage", "epoch", "epochs", "events_read", "events_per_s", "loss",
                                           "val_loss", "events", "features", "time") if k in event}
                )  # fmt: skip
    return summary
