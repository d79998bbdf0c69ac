"""The job queue: huey carries job ids from the API to the workers; ``JobQueue`` submits, cancels, recovers.

The queue is ``SqliteHuey`` in ``DATA_DIR/queue.db`` by default, or ``RedisHuey`` when ``queue_url`` names a
Redis broker, so several worker machines can share it. A queue message only carries a job id; a job runs
once because a worker must first claim it in the store, which also makes duplicate or stale messages
harmless. A job asking for ``workers`` N > 1 gets N messages, (job id, task index), one per task
(``run_task``; docs/scaling.md, "One job on several workers").
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import secrets
import socket
import threading

from huey import Huey, RedisHuey, SqliteHuey

from appliance.server.isolation import JobIdentity, job_uids, kill_processes_of
from appliance.server.jobdir import JobDir
from appliance.server.predict_worker import is_predict
from appliance.server.resources import host_gpus
from appliance.server.runner import JobRun, TaskPlan
from appliance.server.settings import Settings
from appliance.server.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    NoFreeIdentityError,
    TaskOfThisWorkerError,
    now,
)

log = logging.getLogger(__name__)

TASK_NAME = "mlaas4hep.run_job"
NO_IDENTITY_RETRY_S = 5
FRONT_VERSION = "front_version"


def new_job_id() -> str:
    return secrets.token_hex(16)


def make_huey(settings: Settings) -> Huey:
    """The one switch between the embedded queue and a shared broker: ``queue_url``."""
    if settings.queue_url:
        return RedisHuey("mlaas4hep", results=False, url=settings.queue_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("mlaas4hep", results=False, filename=str(settings.queue_db))


def appliance_version() -> str:
    """The installed appliance's version: workers report theirs, and /health tells the ones that differ."""
    try:
        return importlib.metadata.version("mlaas4hep-appliance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def message_id(job_id: str, task: int) -> str:
    """A task's queue message: the job id for task 0 (a one-worker job's only message), then ``id.task``."""
    return job_id if task == 0 else f"{job_id}.{task}"


def job_tasks(job: Job) -> int:
    return int(job.resources.get("workers", 1))


class JobQueue:
    """The store, the huey instance and the task that runs a job; the API enqueues, workers consume."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.job_store)
        self.huey = make_huey(settings)
        self._task = self.huey.task(name=TASK_NAME)(self.run_job)
        self._running = 0
        self._running_lock = threading.Lock()
        self._gpus: int | None = None

    @property
    def gpus(self) -> int:
        """The GPUs of this worker's host, counted once (only workers ask)."""
        if self._gpus is None:
            self._gpus = host_gpus()
        return self._gpus

    def job_dir(self, job_id: str) -> JobDir:
        return JobDir.of(self.settings, job_id)

    def submit(self, job: Job) -> None:
        """Record the job (its directory is already in place) and queue it."""
        self.store.add(job)
        try:
            for task in range(job_tasks(job)):
                self._enqueue(job.id, task)
        except Exception as err:
            self.store.finish(job.id, FAILED, error=f"the job queue refused the job: {err}")
            raise

    def _enqueue(self, job_id: str, task: int) -> None:
        args = (job_id, task) if task else (job_id,)
        self.huey.enqueue(self._task.s(*args, id=message_id(job_id, task)))

    def _later(self, job_id: str, task: int) -> None:
        """The message again in a few seconds (for another worker, or when a uid is free)."""
        args = (job_id, task) if task else (job_id,)
        self._task.schedule(args=args, delay=NO_IDENTITY_RETRY_S, id=message_id(job_id, task))

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.request_cancel(job_id)
        if job is not None and job.state == CANCELLED:
            for task in range(job_tasks(job)):
                self.huey.revoke_by_id(message_id(job_id, task))
        return job

    def reap_stale(self) -> list[str]:
        """Running jobs whose worker went silent (dead and not restarted) become failed; so do multi-worker
        jobs one of whose tasks' workers went silent (the other tasks keep the job's own heartbeat fresh)."""
        limit = now() - self.settings.stale_after_s
        silent = f"stopped answering for {self.settings.stale_after_s:.0f} s"
        failed = self.store.fail_interrupted(
            lambda job: (job.heartbeat or 0) < limit, f"the worker running this job {silent}"
        )
        tasks = self.store.running_tasks()
        if tasks:
            live = {worker.id for worker in self.store.live_workers(self.settings.stale_after_s)}
            for job_id, task, worker in tasks:
                reason = f"the worker running task {task} ({worker}) {silent}"
                if worker not in live and self.store.finish(
                    job_id, FAILED, error=reason, only_from=(RUNNING,)
                ):
                    failed.append(job_id)
        return failed

    def recover(self) -> dict[str, list[str]]:
        """At worker start: fail the jobs a dead worker on this host left running, and queue again the
        queued jobs that have no message in the queue (so none waits forever)."""
        host = socket.gethostname()

        def orphaned(job: Job) -> bool:
            worker_host, _, pid = (job.worker or "").rpartition(":")
            if worker_host != host or _alive(int(pid or 0)):
                return False
            # The job ran in a session of its own under its uid, so its worker's death did not end it: a
            # failed job must not keep training (and holding its uid's files). Killed here, before the store
            # frees the uid: afterwards another worker may hand it to a new job, which the sweep would kill.
            if job.uid is not None and os.geteuid() == 0:
                kill_processes_of(job.uid)
            return True

        failed = self.store.fail_interrupted(
            orphaned, "interrupted: the worker stopped while the job was running; submit it again"
        )
        failed += self.reap_stale()
        pending = {task.id for task in self.huey.pending()}
        requeued = []
        for job in self.store.list(state=QUEUED, limit=1_000_000):
            missing = [t for t in range(job_tasks(job)) if message_id(job.id, t) not in pending]
            for task in missing:
                self._enqueue(job.id, task)
            if missing:
                requeued.append(job.id)
        return {"failed": failed, "requeued": requeued}

    @property
    def version(self) -> str:
        return self.settings.worker_version or appliance_version()

    def announce_front(self) -> None:
        """The API records its version in the store: workers of another version refuse jobs."""
        self.store.set_info(FRONT_VERSION, self.version)

    def version_refusal(self) -> str | None:
        """Why this worker must not run jobs (its version is not the front's), or None."""
        front = self.store.info(FRONT_VERSION)
        if front is None or front == self.version:
            return None
        return f"this worker runs version {self.version}, the front {front}: upgrade or downgrade it to match"

    # -- the worker's heartbeat ------------------------------------------------------------------------------

    def beat(self) -> None:
        """Say in the store that this worker lives (for /health, /metrics), and fail the running jobs of
        workers that went silent on any machine: a worker killed mid-job leaves its job failed, with why."""
        version = self.version
        with self._running_lock:
            running = self._running
        self.store.worker_beat(worker_id(), socket.gethostname(), version, running, gpus=self.gpus)
        reaped = self.reap_stale()
        if reaped:
            log.warning("failed the jobs of silent workers: %s", reaped)

    def start_heartbeats(self, stop: threading.Event) -> threading.Thread:
        """``beat`` every ``heartbeat_s`` on a daemon thread until ``stop`` is set; then the row goes."""

        def loop() -> None:
            while True:
                try:
                    self.beat()
                except Exception:  # the store may be briefly unreachable: try again at the next beat
                    log.exception("worker heartbeat failed")
                if stop.wait(self.settings.heartbeat_s):
                    break
            self.store.worker_gone(worker_id())

        thread = threading.Thread(target=loop, name="mlaas4hep-worker-heartbeat", daemon=True)
        thread.start()
        return thread

    def _queue_deliveries(self, job: Job, result: dict) -> dict:
        """The model's version comes from the store, and every TFaaS replica gets it (``delivery``)."""
        replicas = self.settings.replica_urls
        archive = str(self.job_dir(job.id).model_archive)
        version = self.store.publish_version(job.model_name, job.id, archive, replicas)
        log.info("job %s: %s version %d goes to %s", job.id, job.model_name, version, ", ".join(replicas))
        return {**result, "version": version, "published": replicas}

    # -- the task ------------------------------------------------------------------------------------------

    def run_job(self, job_id: str, task: int = 0) -> None:
        """The huey task: claim the job (or one task of a multi-worker job) and its uid, run its training
        subprocess, record the outcome."""
        refusal = self.version_refusal()
        if refusal is not None:
            # Another worker (of the front's version) may take it; this one asks again later.
            log.error("job %s not taken: %s", job_id, refusal)
            self._later(job_id, task)
            return
        queued = self.store.get(job_id)
        if queued is None or queued.finished_state:
            return
        if not self.gpus and queued.resources.get("device") == "gpu" and (task or queued.state == QUEUED):
            # A worker with a GPU takes it (the API accepted it because one reported a GPU).
            log.info("job %s not taken: it asks for a GPU and this host has none", job_id)
            self._later(job_id, task)
            return
        tasks = job_tasks(queued)
        try:
            if tasks > 1:
                job = self.store.claim_task(job_id, task, worker_id(), job_uids(self.settings))
            else:
                job = self.store.claim(job_id, worker_id(), job_uids(self.settings))
        except (NoFreeIdentityError, TaskOfThisWorkerError) as err:
            # Every uid is busy, or this worker runs another task of the job: it comes back later.
            log.warning("job %s (task %d) waits: %s", job_id, task, err)
            self._later(job_id, task)
            return
        if job is None:
            return
        # Task 0 of a multi-worker job (the chief) records the job's outcome and publishes as a one-worker
        # job does; another task fails (or cancels) the job with its reason when it ends badly, and the job's
        # other tasks stop at their next look at the store.
        plan = TaskPlan(task, tasks) if tasks > 1 else None
        what = f"job {job_id}" + (f" task {task}" if plan else "")
        identity = JobIdentity(job.uid) if job.uid is not None else None
        with self._running_lock:
            self._running += 1
        try:
            run = JobRun(self.settings, job, self.store, worker_id(), identity, task=plan)
            state, error, result = run.run()
        except Exception as err:
            log.exception("%s: internal error", what)
            state, error, result = FAILED, f"internal error of the worker: {err}", None
        finally:
            with self._running_lock:
                self._running -= 1
        log.info("%s: %s%s", what, state, f" ({error})" if error else "")
        if plan is not None and plan.index > 0:
            if state != SUCCEEDED:
                reason = f"task {plan.index} of {plan.count} on {worker_id()}: {error}"
                self.store.finish(job_id, state, error=reason, only_from=(RUNNING,))
            return
        # A predict job makes friend trees, not a model: nothing goes to the TFaaS replicas.
        delivers = state == SUCCEEDED and result is not None and not is_predict(job.request)
        if delivers and self.settings.replica_urls:
            result = self._queue_deliveries(job, result)
        self.store.finish(job_id, state, error=error, result=result, only_from=(RUNNING,))


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
