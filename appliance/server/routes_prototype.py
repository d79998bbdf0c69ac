"""The prototype's calls (the INFN Cloud server's, for existing scripts): upload, submit, status."""

from __future__ import annotations

import flask
from flask import Response

from appliance.server.context import job_view, json_response, own_job, prototype_job_id
from appliance.server.identity import current_owner
from appliance.server.openapi import json_content, operation, query_parameter
from appliance.server.submission import WORKFLOW, json_request, quota_view, store_upload, submit_workflow
from servicecore.errors import BadInputError

PROTOTYPE_JOB = [
    query_parameter("job_id", "the job"),
    query_parameter("process_name", "the job (the prototype's name for job_id)"),
]
ARCHIVE_BODY = {
    "required": True,
    "content": {
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "description": "one tar.gz file part"}},
    },
}
UPLOAD_ANSWER = {
    "description": "the upload's id, its files and your disk quota",
    "content": json_content(
        {
            "type": "object",
            "properties": {
                "upload": {"type": "string"},
                "files": {"type": "array", "items": {"type": "string"}},
                "disk": {"type": "object"},
            },
        }
    ),
}
SUBMIT_ANSWER = {
    "description": "job_id and process_name (both the job id), state, model_name, disk",
    "content": json_content({"type": "object"}),
}


def blueprint() -> flask.Blueprint:
    bp = flask.Blueprint("prototype", __name__)

    @bp.post("/upload")
    @operation(
        "upload a tar.gz of your files; it becomes your latest upload",
        {201: UPLOAD_ANSWER},
        errors=(400, 413, 507),
        raw_body=ARCHIVE_BODY,
    )
    def upload() -> Response:
        owner = current_owner()
        return json_response({**store_upload(owner), "disk": quota_view(owner)}, 201)

    @bp.post("/submit")
    @operation(
        "submit a workflow (prototype call; name required)",
        {201: SUBMIT_ANSWER},
        errors=(400, 404, 413, 415, 507),
        body=WORKFLOW,
    )
    def submit() -> Response:
        body = json_request()
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise BadInputError('missing field "name" (the name of the model to train)')
        owner = current_owner()
        job = submit_workflow(owner, body, source=None)
        answer = {"job_id": job.id, "process_name": job.id, "state": job.state, "model_name": job.model_name}
        return json_response({**answer, "disk": quota_view(owner)}, 201)

    @bp.get("/status")
    @bp.get("/status_docker")
    @operation(
        "a job's state (as GET /jobs/{job_id})",
        {200: {"description": "the job", "content": json_content({"$ref": "#/components/schemas/Job"})}},
        errors=(400, 404),
        parameters=PROTOTYPE_JOB,
    )
    def status() -> Response:
        return json_response(job_view(own_job(prototype_job_id())))

    return bp
