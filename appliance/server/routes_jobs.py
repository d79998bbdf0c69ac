"""The ``/jobs`` resource: submit, list, read, cancel and delete the caller's jobs."""

from __future__ import annotations

import flask
from flask import Response, request

from appliance.server.context import job_queue, job_view, json_response, own_job
from appliance.server.housekeeping import delete_job
from appliance.server.identity import current_owner
from appliance.server.openapi import json_content, operation, path_parameter, query_parameter
from appliance.server.store import STATES
from appliance.server.submission import WORKFLOW, json_request, quota_view, submit_multipart, submit_workflow
from servicecore.errors import BadInputError, ConflictError
from servicecore.http import int_arg

JOB_REF = {"$ref": "#/components/schemas/Job"}
JOB_ANSWER = {"description": "the job", "content": json_content(JOB_REF)}
DELETED_ANSWER = {
    "description": "the finished job is deleted: its files and its record",
    "content": json_content({"type": "object", "properties": {"deleted": {"type": "string"}}}),
}
JOB_ID = path_parameter("job_id", pattern="^[0-9a-f]{32}$")
JOB_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["train", "predict"]},
        "name": {"type": "string"},
        "model_name": {"type": "string"},
        "state": {"type": "string", "enum": list(STATES)},
        "resources": {"type": "object"},
        "created": {"type": "string", "format": "date-time"},
        "started": {"type": "string", "format": "date-time", "nullable": True},
        "finished": {"type": "string", "format": "date-time", "nullable": True},
        "error": {"type": "string", "nullable": True},
        "result": {
            "type": "object",
            "nullable": True,
            "description": "train: bundle, published, version, metrics; predict: name, version, output, "
            "events, passed, branches, files",
        },
        "progress": {
            "type": "object",
            "description": "stage, epoch, epochs, events_read, loss",
        },
        "disk": {
            "type": "object",
            "description": "on submission: used_bytes, quota_bytes",
        },
        "links": {"type": "object"},
        "expires": {
            "type": "string",
            "format": "date-time",
            "nullable": True,
            "description": "when housekeeping deletes the finished job (job_retention_days); null: kept",
        },
    },
}


def blueprint() -> flask.Blueprint:
    bp = flask.Blueprint("jobs", __name__)

    @bp.post("/jobs")
    @operation(
        "submit a workflow: a training, or a predict job (kind predict) on a model of yours",
        {201: JOB_ANSWER},
        errors=(400, 404, 413, 415, 507),
        body=WORKFLOW,
    )
    def create_job() -> Response:
        owner = current_owner()
        if request.mimetype == "multipart/form-data":
            job = submit_multipart(owner)
        else:
            job = submit_workflow(owner, json_request(), source=None)
        response = json_response({**job_view(job), "disk": quota_view(owner)}, 201)
        response.headers["Location"] = f"/jobs/{job.id}"
        return response

    @bp.get("/jobs")
    @operation(
        "your jobs, newest first",
        {200: {"description": "the jobs", "content": json_content({"type": "object"})}},
        errors=(400,),
        parameters=[
            query_parameter("state", "only jobs in this state", type="string", enum=list(STATES)),
            query_parameter("limit", "at most this many (1-1000)", type="integer", minimum=1, maximum=1000),
        ],
    )
    def list_jobs() -> Response:
        queue = job_queue()
        queue.reap_stale()
        state = request.args.get("state") or None
        if state is not None and state not in STATES:
            raise BadInputError(f"unknown state {state!r}; states: {', '.join(STATES)}")
        jobs = queue.store.list(owner=current_owner(), state=state, limit=int_arg("limit", 100, 1, 1000))
        return json_response({"jobs": [job_view(job, progress=False) for job in jobs]})

    @bp.get("/jobs/<job_id>")
    @operation(
        "state, progress, timestamps and metrics", {200: JOB_ANSWER}, errors=(404,), parameters=[JOB_ID]
    )
    def get_job(job_id: str) -> Response:
        return json_response(job_view(own_job(job_id)))

    @bp.delete("/jobs/<job_id>")
    @operation(
        "cancel a queued or running job (202); delete a finished one, its files and record (200)",
        {202: JOB_ANSWER, 200: DELETED_ANSWER},
        errors=(404, 409),
        parameters=[JOB_ID],
    )
    def cancel_or_delete_job(job_id: str) -> Response:
        job = own_job(job_id)
        queue = job_queue()
        if not job.finished_state:
            cancelled = queue.cancel(job_id)
            return json_response(job_view(cancelled or job), 202)
        if not delete_job(queue.settings, queue.store, job):
            raise ConflictError(f"job {job_id} changed state while it was being deleted: try again")
        return json_response({"deleted": job_id, "state": job.state})

    return bp
