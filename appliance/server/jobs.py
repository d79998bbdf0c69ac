"""The server's job machinery in one import, for callers that want the whole of it.

Each concern lives in its own module: ``jobdir`` (the layout), ``resources`` (requests), ``store`` (the
SQLite job store), ``queue`` (huey and ``JobQueue``), ``runner`` (the sandboxed subprocess), ``isolation``
(the job's own uid and what it may reach on disk), ``network`` (its network namespace), ``publisher`` (the
bundle check and publishing) and ``progress`` (reading what a job wrote).
"""

from __future__ import annotations

from appliance.server.jobdir import JOB_ID, PLOTS, JobDir
from appliance.server.progress import read_progress
from appliance.server.queue import TASK_NAME, JobQueue, make_huey, new_job_id, worker_id
from appliance.server.resources import Resources
from appliance.server.store import (
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    JobStore,
)

__all__ = [
    "CANCELLED",
    "FAILED",
    "FINISHED_STATES",
    "JOB_ID",
    "PLOTS",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TASK_NAME",
    "Job",
    "JobDir",
    "JobQueue",
    "JobStore",
    "Resources",
    "make_huey",
    "new_job_id",
    "read_progress",
    "worker_id",
]
