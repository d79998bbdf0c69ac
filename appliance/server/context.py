"""What every route of the API needs: the app's job queue and settings, the caller's jobs, JSON answers."""

from __future__ import annotations

from typing import Any

import flask
import orjson
from flask import Response, request

from appliance.server.housekeeping import job_expiry
from appliance.server.identity import current_owner
from appliance.server.jobdir import JOB_ID, PLOTS, JobDir
from appliance.server.progress import read_progress
from appliance.server.queue import JobQueue
from appliance.server.settings import Settings
from appliance.server.store import SUCCEEDED, Job, iso
from servicecore.errors import BadInputError, ConflictError, NotFoundError

SERVER_NAME = "mlaas4hep"


def job_queue() -> JobQueue:
    return flask.current_app.extensions[SERVER_NAME]


def settings() -> Settings:
    return job_queue().settings


def job_dir(job: Job) -> JobDir:
    return job_queue().job_dir(job.id)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json")


def prototype_job_id() -> str:
    """The prototype calls name their job in the query: ``?job_id=`` or ``?process_name=``."""
    job_id = request.args.get("job_id") or request.args.get("process_name")
    if not job_id:
        raise BadInputError("say which job with ?job_id=<id> (or ?process_name=<id>)")
    return job_id


def own_job(job_id: str) -> Job:
    """The caller's job; another user's job is as unknown as a job that never existed."""
    queue = job_queue()
    if not JOB_ID.match(job_id):
        raise NotFoundError(f"no job {job_id!r}")
    queue.reap_stale()
    job = queue.store.get(job_id, owner=current_owner())
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    return job


def job_view(job: Job, progress: bool = True) -> dict[str, Any]:
    """A job as its owner sees it: the record, its progress and the links to what it made."""
    view = job.to_json()
    view.pop("owner")
    view["kind"] = job.request.get("kind") or "train"
    if progress:
        view["progress"] = read_progress(job_dir(job))
    links = {"self": f"/jobs/{job.id}", "logs": f"/jobs/{job.id}/logs"}
    if view["kind"] == "predict":
        if job.state == SUCCEEDED and not job.request.get("fout"):
            links["friends"] = f"/jobs/{job.id}/friends"
    elif job.state == SUCCEEDED:
        links["model"] = f"/jobs/{job.id}/model"
        made = [name for name in PLOTS if job_dir(job).plot(name).is_file()]  # a regression has no ROC
        links.update({f"plot_{name}": f"/jobs/{job.id}/plots/{name}.png" for name in made})
    view["links"] = links
    view["expires"] = iso(job_expiry(settings(), job))  # when housekeeping deletes it (null: kept)
    return view


def require_success(job: Job) -> None:
    if job.state != SUCCEEDED:
        raise ConflictError(
            f"job {job.id} is {job.state}: what it makes (model, plots, friend trees) exists only once it "
            "has succeeded"
        )
