"""Housekeeping: deleting a finished job, and the sweep that deletes expired jobs and uploads.

A finished job is kept ``job_retention_days`` after it finished, an upload ``upload_retention_days`` after it
was made (0 keeps them for ever); a worker sweeps every ``sweep_interval_s``. A job's directory is first
renamed out of ``jobs/`` (so nobody ever reads a half-deleted job), then its record goes, then the files;
a published model stays in the model repository: it belongs to TFaaS now (deleted there with its own call).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.server.jobdir import INCOMING, JOB_ID, JobDir
from appliance.server.settings import Settings
from appliance.server.store import FINISHED_STATES, Job, JobStore

log = logging.getLogger(__name__)
DAY_S = 86_400.0


def job_expiry(settings: Settings, job: Job) -> float | None:
    """When a finished job expires (a Unix time); None while it runs, or when jobs are kept."""
    if settings.job_retention_days <= 0 or not job.finished_state or job.finished is None:
        return None
    return job.finished + settings.job_retention_days * DAY_S


def delete_job(settings: Settings, store: JobStore, job: Job) -> bool:
    """Delete a finished job: its directory, then its record. False when the job is not finished (any more
    or yet): nothing is touched then."""
    if not job.finished_state:
        return False
    directory = JobDir.of(settings, job.id).root
    trash = settings.jobs_dir / INCOMING / f"{job.id}.deleted-{uuid.uuid4().hex[:8]}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    moved = False
    try:
        directory.rename(trash)
        moved = True
    except FileNotFoundError:
        pass  # a job whose directory is already gone: only its record is left to delete
    if not store.delete(job.id):
        if moved:  # the record says it is not finished after all: put everything back
            trash.rename(directory)
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


@dataclass
class SweepReport:
    jobs: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)


def sweep(settings: Settings, store: JobStore, at: float | None = None) -> SweepReport:
    """Delete every job and upload that has expired at ``at`` (now by default)."""
    at = time.time() if at is None else at
    report = SweepReport()
    if settings.job_retention_days > 0:
        for state in FINISHED_STATES:
            for job in store.list(state=state, limit=1_000_000):
                expiry = job_expiry(settings, job)
                if expiry is not None and expiry <= at and delete_job(settings, store, job):
                    report.jobs.append(job.id)
    if settings.upload_retention_days > 0:
        cutoff = at - settings.upload_retention_days * DAY_S
        for owner_dir in _children(settings.uploads_dir):
            report.uploads += _sweep_uploads(owner_dir, cutoff)
    if report.jobs or report.uploads:
        log.info("expired and deleted: jobs %s, uploads %s", report.jobs, report.uploads)
    return report


def _children(directory: Path) -> list[Path]:
    try:
        return [path for path in directory.iterdir() if path.is_dir() and path.name != INCOMING]
    except FileNotFoundError:
        return []


def _sweep_uploads(owner_dir: Path, cutoff: float) -> list[str]:
    """One user's uploads made before ``cutoff``; the latest-upload pointer goes with the upload it names."""
    from appliance.server.submission import LATEST_UPLOAD  # here: submission needs the app's context

    deleted = []
    latest = owner_dir / LATEST_UPLOAD
    for upload in _children(owner_dir):
        if not JOB_ID.match(upload.name) or upload.stat().st_mtime > cutoff:
            continue
        trash = owner_dir / INCOMING / f"{upload.name}.deleted"
        trash.parent.mkdir(exist_ok=True)
        upload.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        deleted.append(upload.name)
    try:
        if latest.read_text().strip() in deleted:
            latest.unlink()
    except FileNotFoundError:
        pass
    return deleted


def start_sweeper(settings: Settings, store: JobStore, stop: threading.Event) -> threading.Thread | None:
    """Sweep now and then every ``sweep_interval_s`` on a daemon thread until ``stop`` is set; None when
    everything is kept (nothing to sweep)."""
    if settings.job_retention_days <= 0 and settings.upload_retention_days <= 0:
        return None

    def loop() -> None:
        while True:
            try:
                sweep(settings, store)
            except Exception:  # a store briefly unreachable, a file in the way: the next sweep tries again
                log.exception("housekeeping sweep failed")
            if stop.wait(settings.sweep_interval_s):
                return

    thread = threading.Thread(target=loop, name="mlaas4hep-housekeeping", daemon=True)
    thread.start()
    return thread
