"""The MLaaS4HEP HTTP API: the prototype's calls and the ``/jobs`` resource API, built by ``create_app``.

Jobs never run here: a request is validated, its inputs are written into a fresh job directory (built aside,
then renamed into place), and the job id is queued for the workers
(``appliance.server.jobs``). Every error is a JSON
object ``{"error": message, "status": code}`` with a 4xx status; only a bug answers 500, also as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import flask
from flask import Flask, Response, request
from werkzeug.utils import secure_filename

from appliance.data.workflow import URL_SCHEMES, load_workflow
from appliance.server.identity import SETTINGS_KEY, current_owner, install_auth
from appliance.server.jobdir import INCOMING, JOB_ID, PLOTS, PRIVATE_MODE, JobDir
from appliance.server.progress import read_progress
from appliance.server.queue import JobQueue, new_job_id
from appliance.server.resources import Resources
from appliance.server.settings import Settings
from appliance.server.store import FINISHED_STATES, QUEUED, SUCCEEDED, Job
from servicecore.errors import (
    BadInputError,
    ConflictError,
    NotFoundError,
)
from servicecore.http import install_error_handlers, int_arg, json_body
from servicecore.naming import model_name, owner_namespace
from servicecore.safetar import extract_archive

log = logging.getLogger(__name__)

# curl -d sends application/x-www-form-urlencoded unless told otherwise, as the prototype's users did.
PROTOTYPE_BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain", "")
SERVER_NAME = "mlaas4hep"
REQUEST_KEYS = frozenset(
    {
        "name",
        "files",
        "labels",
        "model",
        "params",
        "preproc",
        "device",
        "memory",
        "cpus",
        "wall_time",
        "upload",
    }
)
REQUIRED_KEYS = ("files", "labels", "model")
XROOTD_SCHEMES = ("root://", "roots://", "xroot://", "xroots://")
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
LATEST_UPLOAD = "latest"


def create_app(settings: Settings) -> Flask:
    """The app, configured from one settings object; each gunicorn worker builds its own."""
    app = Flask(SERVER_NAME)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    for directory in (settings.jobs_dir, settings.uploads_dir, settings.model_repository):
        directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # uploads are nobody else's business, jobs' least of all
        settings.uploads_dir.chmod(0o700)
    app.extensions[SERVER_NAME] = JobQueue(settings)
    app.register_blueprint(_routes())
    install_error_handlers(app)
    app.config[SETTINGS_KEY] = settings
    install_auth(app, settings)
    return app


def _queue() -> JobQueue:
    return flask.current_app.extensions[SERVER_NAME]


# -- routes -----------------------------------------------------------------------------------------------


def _routes() -> flask.Blueprint:
    bp = flask.Blueprint(SERVER_NAME, __name__)

    @bp.get("/hello")
    @bp.get("/health")
    def hello() -> Response:
        return _json({"service": "MLaaS4HEP", "status": "ok"})

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return _json(openapi_document())

    @bp.post("/upload")
    def upload() -> Response:
        return _json(_store_upload(current_owner()), 201)

    @bp.post("/submit")
    def submit() -> Response:
        body = json_body(PROTOTYPE_BODY_TYPES)
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise BadInputError('missing field "name" (the name of the model to train)')
        job = _submit(current_owner(), body, source=None)
        return _json(
            {"job_id": job.id, "process_name": job.id, "state": job.state, "model_name": job.model_name}, 201
        )

    @bp.get("/status")
    @bp.get("/status_docker")
    def status() -> Response:
        return _json(_job_view(_own_job(_prototype_job_id())))

    @bp.get("/logs")
    def prototype_logs() -> Response:
        return _logs(_own_job(_prototype_job_id()))

    @bp.get("/model")
    def prototype_model() -> Response:
        return _model(_own_job(_prototype_job_id()))

    @bp.post("/jobs")
    def create_job() -> tuple[Response, int] | Response:
        owner = current_owner()
        if request.mimetype == "multipart/form-data":
            job = _submit_multipart(owner)
        else:
            job = _submit(owner, json_body(PROTOTYPE_BODY_TYPES), source=None)
        response = _json(_job_view(job), 201)
        response.headers["Location"] = f"/jobs/{job.id}"
        return response

    @bp.get("/jobs")
    def list_jobs() -> Response:
        queue = _queue()
        queue.reap_stale()
        state = request.args.get("state") or None
        if state is not None and state not in (QUEUED, "running", *FINISHED_STATES):
            raise BadInputError(f"unknown state {state!r}")
        jobs = queue.store.list(owner=current_owner(), state=state, limit=int_arg("limit", 100, 1, 1000))
        return _json({"jobs": [_job_view(job, progress=False) for job in jobs]})

    @bp.get("/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        return _json(_job_view(_own_job(job_id)))

    @bp.delete("/jobs/<job_id>")
    def cancel_job(job_id: str) -> Response:
        job = _own_job(job_id)
        if job.finished_state:
            raise ConflictError(f"job {job_id} has already {job.state}")
        cancelled = _queue().cancel(job_id)
        return _json(_job_view(cancelled or job), 202)

    @bp.get("/jobs/<job_id>/logs")
    def job_logs(job_id: str) -> Response:
        return _logs(_own_job(job_id))

    @bp.get("/jobs/<job_id>/model")
    def job_model(job_id: str) -> Response:
        return _model(_own_job(job_id))

    @bp.get("/jobs/<job_id>/plots/<name>.png")
    def job_plot(job_id: str, name: str) -> Response:
        job = _own_job(job_id)
        if name not in PLOTS:
            raise NotFoundError(f"no plot {name!r}; plots: {', '.join(PLOTS)}")
        _require_success(job)
        path = _queue().job_dir(job.id).plot(name)
        if not path.is_file():
            raise NotFoundError(f"job {job.id} made no {name} plot")
        return flask.send_file(path, mimetype="image/png", max_age=0)

    return bp


# -- jobs -------------------------------------------------------------------------------------------------


def _prototype_job_id() -> str:
    job_id = request.args.get("job_id") or request.args.get("process_name")
    if not job_id:
        raise BadInputError("say which job with ?job_id=<id> (or ?process_name=<id>)")
    return job_id


def _own_job(job_id: str) -> Job:
    """The caller's job; another user's job is as unknown as a job that never existed."""
    queue = _queue()
    if not JOB_ID.match(job_id):
        raise NotFoundError(f"no job {job_id!r}")
    queue.reap_stale()
    job = queue.store.get(job_id, owner=current_owner())
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    return job


def _job_view(job: Job, progress: bool = True) -> dict[str, Any]:
    view = job.to_json()
    view.pop("owner")
    if progress:
        view["progress"] = read_progress(_queue().job_dir(job.id))
    links = {"self": f"/jobs/{job.id}", "logs": f"/jobs/{job.id}/logs"}
    if job.state == SUCCEEDED:
        links["model"] = f"/jobs/{job.id}/model"
        links.update({f"plot_{name}": f"/jobs/{job.id}/plots/{name}.png" for name in PLOTS})
    view["links"] = links
    return view


def _require_success(job: Job) -> None:
    if job.state != SUCCEEDED:
        raise ConflictError(
            f"job {job.id} is {job.state}: its model and plots exist only once it has succeeded"
        )


def _model(job: Job) -> Response:
    _require_success(job)
    path = _queue().job_dir(job.id).model_archive
    if not path.is_file():
        raise NotFoundError(f"job {job.id} has no model archive")
    return flask.send_file(
        path, mimetype="application/gzip", as_attachment=True, download_name=f"{job.model_name}.tar.gz"
    )


def _logs(job: Job) -> Response:
    """The job's log; ``?follow=true`` streams it until the job ends, ``?offset=N`` starts at byte N."""
    path = _queue().job_dir(job.id).log
    offset = int_arg("offset", 0, 0, 1 << 62)
    follow = request.args.get("follow", "").lower() in ("1", "true", "yes")
    if not follow:
        data = b""
        with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        response = Response(data, mimetype="text/plain")
        response.headers["X-Log-Offset"] = str(offset + len(data))
        response.headers["X-Job-State"] = job.state
        return response
    queue, settings = _queue(), _queue().settings

    def stream() -> Iterator[bytes]:
        position = offset
        deadline = time.monotonic() + settings.follow_max_s
        while True:
            finished = queue.store.get(job.id).finished_state
            with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
                f.seek(position)
                while chunk := f.read(65_536):
                    position += len(chunk)
                    yield chunk
            if finished or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    return Response(stream(), mimetype="text/plain")


def _submit(owner: str, body: Mapping[str, Any], source: Path | None) -> Job:
    """Validate a workflow request, build its job directory and queue it."""
    queue = _queue()
    settings = queue.settings
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise BadInputError(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(REQUEST_KEYS))}"
        )
    missing = [key for key in REQUIRED_KEYS if body.get(key) in (None, "", [], {})]
    if missing:
        raise BadInputError(f"missing field(s) {', '.join(missing)}")
    name = body.get("name") or "model"
    if not isinstance(name, str):
        raise BadInputError(f"name must be a string, got {name!r}")
    resources = Resources.from_request(body, settings)
    if source is None:
        source = _upload_dir(owner, body.get("upload"))
    job_id = new_job_id()
    final, staging = JobDir.of(settings, job_id), JobDir.staging(settings, job_id)
    staging.root.mkdir(parents=True)
    try:
        model_file, has_preproc = _write_inputs(body, source, staging, final)
        _make_readable(staging.root)
        # Private to the server until a worker opens it to the job's own uid.
        staging.root.chmod(PRIVATE_MODE)
        staging.root.rename(final.root)
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    job = Job(
        id=job_id,
        owner=owner,
        name=name,
        model_name=model_name(owner, name),
        state=QUEUED,
        resources=resources.__dict__,
        created=time.time(),
        request={"model_file": model_file, "preproc": has_preproc},
    )
    queue.submit(job)
    log.info("job %s queued for %s (%s)", job_id, owner, job.model_name)
    return job


def _write_inputs(
    body: Mapping[str, Any], source: Path | None, job: JobDir, final: JobDir
) -> tuple[str, bool]:
    """The job's files.txt, labels.txt, params.json, [preproc.json] and model file, checked with the
    workflow reader. Local data paths must name files of the upload, linked into ``inputs/upload``."""
    job.inputs.mkdir(parents=True)
    upload = None
    if source is not None:
        shutil.copytree(source, job.upload, copy_function=_link_or_copy)
        upload = job.upload

    params = _json_input(body.get("params") or {}, "params", upload)
    preproc = _json_input(body["preproc"], "preproc", upload) if body.get("preproc") else None
    redirector = params.get("redirector", "") if isinstance(params, dict) else ""

    entries = _files_entries(body["files"], upload)
    resolved = [_resolve_entry(entry, upload, redirector) for entry in entries]
    job.files_list.write_text("".join(f"{path}\n" for path in resolved))
    job.labels.write_text(_labels_text(body["labels"], upload))
    job.params.write_text(json.dumps(params))
    if preproc is not None:
        job.preproc.write_text(json.dumps(preproc))
    model_file = _write_model(body["model"], upload, job)

    workflow = load_workflow(job.files_list, job.labels, params, preproc)
    _check_urls(workflow.files)
    # The job sees the directory at its final place.
    job.files_list.write_text(
        "".join(f"{str(path).replace(str(job.inputs), str(final.inputs), 1)}\n" for path in resolved)
    )
    return model_file, preproc is not None


def _reference(name: Any, what: str, upload: Path | None) -> Path:
    """A file of the user's upload, by its relative name: never outside the upload."""
    if not isinstance(name, str) or not name.strip():
        raise BadInputError(f"{what} must name a file of your upload, got {name!r}")
    if upload is None:
        raise BadInputError(f"{what} {name!r} references nothing uploaded: POST /upload a .tar.gz first")
    relative = PurePosixPath(name.strip())
    if relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise BadInputError(f"{what} {name!r} must be a relative path inside your upload")
    path = upload / relative
    if not path.is_file():
        raise BadInputError(f"{what} {name!r} references nothing uploaded (not in your upload)")
    return path


def _json_input(value: Any, what: str, upload: Path | None) -> dict[str, Any]:
    if isinstance(value, str):
        path = _reference(value, what, upload)
        try:
            value = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInputError(f"{what} file {path.name!r} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise BadInputError(f"{what} must be a JSON object or the name of an uploaded JSON file")
    return value


def _files_entries(value: Any, upload: Path | None) -> list[str]:
    if isinstance(value, str):
        value = [
            line.strip()
            for line in _reference(value, "files", upload).read_text(errors="replace").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise BadInputError(
            "files must be a list of ROOT file URLs or paths, or the name of an uploaded list"
        )
    return [v.strip() for v in value]


def _resolve_entry(entry: str, upload: Path | None, redirector: str) -> str:
    """A URL as it is; a local path only inside the upload; otherwise the redirector's (as the original)."""
    if entry.startswith(URL_SCHEMES):
        return entry
    relative = PurePosixPath(entry)
    inside = not relative.is_absolute() and ".." not in relative.parts
    if upload is not None and inside and (upload / relative).is_file():
        return str(upload / relative)
    if redirector and isinstance(redirector, str):
        return f"{redirector.rstrip('/')}//{entry.lstrip('/')}"
    raise BadInputError(f"files entry {entry!r} references nothing uploaded and is not a URL (root://...); "
        "upload it, give its URL, or set a redirector in params"
    )  # fmt: skip


def _labels_text(value: Any, upload: Path | None) -> str:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int | str) and not isinstance(v, bool) for v in value)
    ):
        return "".join(f"{v}\n" for v in value)
    if isinstance(value, str):
        if upload is not None and not value.strip().startswith("/") and (upload / value.strip()).is_file():
            return _reference(value, "labels", upload).read_text(errors="replace")
        if "/" in value or value.endswith((".txt", ".json", ".csv")):
            _reference(value, "labels", upload)
        return value + "\n"
    raise BadInputError(
        "labels must be a list (one per file), a comma list, a branch name or an uploaded file"
    )


def _write_model(value: Any, upload: Path | None, job: JobDir) -> str:
    if isinstance(value, dict):
        job.model_file("model.json").write_text(json.dumps(value))
        return "model.json"
    path = _reference(value, "model", upload)
    if path.suffix not in (".py", ".json"):
        raise BadInputError(f"model {path.name!r} must be a Python (.py) or JSON (.json) model file")
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            model = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInputError(f"model {path.name!r} failed to load: not valid JSON: {err}") from None
        if not isinstance(model, dict):
            raise BadInputError(f"model {path.name!r} must hold a JSON object")
    else:
        # Only a syntax check here: user code runs in the job, as the job user, never in the API.
        try:
            compile(data, path.name, "exec")
        except (SyntaxError, ValueError) as err:
            raise BadInputError(f"model {path.name!r} failed to load: {type(err).__name__}: {err}") from None
    target = job.model_file(f"model{path.suffix}")
    target.write_bytes(data)
    return target.name


def _check_urls(urls: list[str]) -> None:
    """Stat every XRootD input now, so an unreadable URL is a 400 instead of a failed job later."""
    settings = _queue().settings
    if not settings.check_urls:
        return
    remote = [url for url in urls if url.startswith(XROOTD_SCHEMES)]
    if not remote:
        return
    from XRootD.client import URL, FileSystem

    for url in remote:
        parsed = URL(url)
        if not parsed.is_valid():
            raise BadInputError(f"input URL {url!r} is not a valid XRootD URL")
        status, _ = FileSystem(f"{parsed.protocol}://{parsed.hostid}").stat(
            parsed.path_with_params, timeout=settings.url_check_timeout_s
        )
        if not status.ok:
            raise BadInputError(f"cannot read input {url!r}: {status.message.strip()}")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _make_readable(root: Path) -> None:
    """The job runs as another user: it must read its inputs (it never writes them)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)


# -- uploads ----------------------------------------------------------------------------------------------


def _owner_uploads(owner: str) -> Path:
    return _queue().settings.uploads_dir / owner_namespace(owner)


def _store_upload(owner: str) -> dict[str, Any]:
    """Extract the request's tar archive into a new upload of ``owner`` (built aside, renamed into place);
    it becomes the owner's latest upload, which ``/submit`` uses unless the request names another."""
    base = _owner_uploads(owner)
    upload_id = new_job_id()
    staging = base / INCOMING / upload_id
    staging.mkdir(parents=True)
    try:
        files = _receive_archive(staging)
        _make_readable(staging)
        staging.rename(base / upload_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = base / f".{LATEST_UPLOAD}-{upload_id}"
    pointer.write_text(upload_id)
    pointer.replace(base / LATEST_UPLOAD)
    return {"upload": upload_id, "files": sorted(str(path.relative_to(staging)) for path in files)}


def _receive_archive(directory: Path) -> list[Path]:
    settings = _queue().settings
    if request.mimetype == "multipart/form-data":
        parts = list(request.files.values())
        if len(parts) != 1:
            raise BadInputError("send one tar.gz file part (or the archive as the request body)")
        stream = parts[0].stream
    else:
        stream = request.stream
    return extract_archive(
        stream, directory, max_bytes=settings.max_upload_bytes, max_members=settings.max_upload_members
    )


def _upload_dir(owner: str, upload_id: Any) -> Path | None:
    """The upload a request names, or the owner's latest one; None when the owner has uploaded nothing."""
    base = _owner_uploads(owner)
    if upload_id in (None, ""):
        with contextlib.suppress(OSError):
            upload_id = (base / LATEST_UPLOAD).read_text().strip()
        if upload_id in (None, ""):
            return None
    if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id) or not (base / upload_id).is_dir():
        raise BadInputError(f"upload {upload_id!r} references nothing uploaded")
    return base / upload_id


def _submit_multipart(owner: str) -> Job:
    """``POST /jobs`` as multipart: file parts (``model``, ``files``, ``labels``, ``params``, ``preproc``,
    any data file, and ``archive``, a tar.gz extracted safely) and text fields of the same names, or one
    ``workflow`` field holding the JSON request."""
    settings = _queue().settings
    form = request.form
    body: dict[str, Any] = {}
    if form.get("workflow"):
        try:
            body = json.loads(form["workflow"])
        except json.JSONDecodeError as err:
            raise BadInputError(f"the workflow field is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise BadInputError("the workflow field must hold a JSON object")
    for key, value in form.items():
        if key == "workflow":
            continue
        if key in ("params", "preproc"):
            try:
                body[key] = json.loads(value)
            except json.JSONDecodeError as err:
                raise BadInputError(f"the {key} field is not valid JSON: {err}") from None
        elif key == "files":
            body[key] = [
                line.strip() for line in value.splitlines() if line.strip() and not line.startswith("#")
            ]
        else:
            body[key] = value
    if not request.files:
        return _submit(owner, body, source=None)
    staging = settings.jobs_dir / INCOMING / f"upload-{new_job_id()}"
    staging.mkdir(parents=True)
    try:
        for field_name, part in request.files.items(multi=True):
            if field_name == "archive":
                extract_archive(part.stream, staging, max_bytes=settings.max_upload_bytes,
                                max_members=settings.max_upload_members)  # fmt: skip
                continue
            filename = secure_filename(part.filename or "") or secure_filename(field_name)
            if not filename:
                raise BadInputError(f"file part {field_name!r} has no usable file name")
            part.save(staging / filename)
            if field_name in ("model", "files", "labels", "params", "preproc"):
                body[field_name] = filename
        return _submit(owner, body, source=staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- helpers ----------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, allow_nan=False), status=status, mimetype="application/json")


# -- OpenAPI ----------------------------------------------------------------------------------------------

ERROR_RESPONSE = {
    "description": "bad input, unknown job (404), model not ready (409)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
JOB_RESPONSE = {
    "description": "the job",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
}
JOB_ID_PARAMETER = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
PROTOTYPE_JOB_PARAMETERS = [
    {"name": "job_id", "in": "query", "schema": {"type": "string"}},
    {"name": "process_name", "in": "query", "schema": {"type": "string"}, "description": "same as job_id"},
]
WORKFLOW_SCHEMA = {
    "type": "object",
    "description": "String values of files, labels, model, params and preproc name files of your upload; "
    "otherwise files is a list of URLs, labels a list, params/preproc objects, model a JSON model.",
    "properties": {
        "name": {"type": "string", "description": "model name; published as <owner>.<name>"},
        "files": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "labels": {"oneOf": [{"type": "string"}, {"type": "array", "items": {}}]},
        "model": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "params": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "preproc": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "upload": {"type": "string", "description": "an upload id (default: your latest upload)"},
        "memory": {"oneOf": [{"type": "string", "example": "3gb"}, {"type": "number"}]},
        "cpus": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        "wall_time": {"oneOf": [{"type": "string", "example": "2h"}, {"type": "number"}]},
        "device": {"type": "string", "enum": ["cpu", "gpu"]},
    },
    "required": ["files", "labels", "model"],
    "additionalProperties": False,
}


def _operation(summary: str, responses: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, "4XX": ERROR_RESPONSE}, **extra}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3 document of every call of this API."""
    from apispec import APISpec

    spec = APISpec(title="MLaaS4HEP", version="1.0.0", openapi_version="3.0.3")
    spec.components.schema(
        "Error",
        {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
    )
    spec.components.schema("Workflow", WORKFLOW_SCHEMA)
    spec.components.schema(
        "Job",
        {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "model_name": {"type": "string"},
                "state": {"type": "string", "enum": [QUEUED, "running", *FINISHED_STATES]},
                "resources": {"type": "object"},
                "created": {"type": "string", "format": "date-time"},
                "started": {"type": "string", "format": "date-time", "nullable": True},
                "finished": {"type": "string", "format": "date-time", "nullable": True},
                "error": {"type": "string", "nullable": True},
                "result": {
                    "type": "object",
                    "nullable": True,
                    "description": "bundle, name, version, metrics",
                },
                "progress": {
                    "type": "object",
                    "description": "stage, epoch, epochs, events_read, events_per_s",
                },
                "links": {"type": "object"},
            },
        },
    )
    ok = {"200": {"description": "ok"}}
    workflow_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Workflow"}},
            "multipart/form-data": {"schema": {"type": "object", "description": "file parts model, files, "
                                    "labels, params, preproc, archive (tar.gz); or a workflow JSON field"}},
        },
    }  # fmt: skip
    tar_body = {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
    binary = {"200": {"description": "file", "content": {"application/gzip": {}}}}
    spec.path("/hello", operations={"get": _operation("health check", ok)})
    spec.path("/health", operations={"get": _operation("health check", ok)})
    spec.path("/upload", operations={"post": _operation("upload a tar.gz of your files", {"201": {
        "description": "upload id and its files"}}, requestBody=tar_body)})  # fmt: skip
    spec.path("/submit", operations={"post": _operation("submit a workflow (prototype call; name required)", {
        "201": {"description": "job_id and process_name"}}, requestBody=workflow_body)})  # fmt: skip
    for path, summary, response in (("/status", "a job's state", JOB_RESPONSE),
                                    ("/status_docker", "a job's state (prototype name)", JOB_RESPONSE),
                                    ("/logs", "a job's log", {"description": "text"}),
                                    ("/model", "a job's model bundle (tar.gz)", binary["200"])):  # fmt: skip
        spec.path(path, operations={"get": _operation(summary, {"200": response},
                                                      parameters=PROTOTYPE_JOB_PARAMETERS)})  # fmt: skip
    spec.path("/jobs", operations={
        "post": _operation("submit a workflow", {"201": JOB_RESPONSE}, requestBody=workflow_body),
        "get": _operation("your jobs, newest first", ok, parameters=[
            {"name": "state", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer"}}]),
    })  # fmt: skip
    spec.path("/jobs/{job_id}", operations={
        "get": _operation("state, progress, timestamps and metrics", {"200": JOB_RESPONSE},
                          parameters=[JOB_ID_PARAMETER]),
        "delete": _operation("cancel a queued or running job", {"202": JOB_RESPONSE},
                             parameters=[JOB_ID_PARAMETER]),
    })  # fmt: skip
    spec.path("/jobs/{job_id}/logs", operations={"get": _operation("the job's log", {"200": {"description":
        "text; header X-Log-Offset"}}, parameters=[JOB_ID_PARAMETER,
        {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
        {"name": "offset", "in": "query", "schema": {"type": "integer"}}])})  # fmt: skip
    spec.path("/jobs/{job_id}/model", operations={"get": _operation("the model bundle (tar.gz)", binary,
        parameters=[JOB_ID_PARAMETER])})  # fmt: skip
    spec.path("/jobs/{job_id}/plots/{name}.png", operations={"get": _operation("ROC or loss plot", {"200": {
        "description": "PNG", "content": {"image/png": {}}}}, parameters=[JOB_ID_PARAMETER, {"name": "name",
        "in": "path", "required": True, "schema": {"type": "string", "enum": list(PLOTS)}}])})  # fmt: skip
    spec.path("/openapi.json", operations={"get": _operation("this document", ok)})
    return spec.to_dict()
