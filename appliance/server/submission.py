"""Turning a request into a queued job: the workflow body, uploads, and the job directory built from them.

One piece although above 400 lines: uploads, quotas and the workflow's files are one path through which a
request's bytes reach the disk, and the checks on that path (paths inside the upload, limits, quota) are
easier to audit read together.

The workflow body is declared once (``WORKFLOW``): its validation here and its schema in the OpenAPI
document read the same declaration. Jobs never run here: a request is validated, its inputs are written into
a fresh job directory (built aside, then renamed into place), and the job id is queued for the workers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from flask import request
from werkzeug.utils import secure_filename

from appliance.data.workflow import URL_SCHEMES, load_workflow
from appliance.server.context import job_queue
from appliance.server.jobdir import INCOMING, PRIVATE_MODE, JobDir
from appliance.server.network import parse_endpoints
from appliance.server.openapi import RequestBody
from appliance.server.queue import new_job_id
from appliance.server.resources import Resources, require_gpu_worker, require_live_workers
from appliance.server.settings import Settings
from appliance.server.store import QUEUED, Job
from appliance.training.distributed import refuse_framework
from appliance.training.warm_start import InitModel, check_workflow, read_init_model
from servicecore.errors import BadInputError, InsufficientStorageError, NotFoundError, PayloadTooLargeError
from servicecore.http import json_body
from servicecore.naming import NAME, model_name, owner_namespace, owns, versions
from servicecore.safetar import extract_archive

log = logging.getLogger(__name__)

XROOTD_SCHEMES = ("root://", "roots://", "xroot://", "xroots://")
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
LATEST_UPLOAD = "latest"
UNPACKS_TOO_LARGE = "archive unpacks to more than"
# curl -d sends application/x-www-form-urlencoded unless told otherwise, as the prototype's users did.
PROTOTYPE_BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain", "")
_STRING_OR_LIST = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_NAME_OR_OBJECT = {"oneOf": [{"type": "string"}, {"type": "object"}]}
_QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
WORKFLOW = RequestBody(
    name="Workflow",
    description="String values of files, labels, model, params and preproc name files of your upload; "
    "otherwise files is a list of URLs, labels a list, params/preproc objects, model a JSON model. "
    'A training needs labels; "kind": "predict" applies your model NAME[/VERSION] to the files instead '
    "(fields kind, model, files, fout, upload and the resources; docs/server.md).",
    fields={
        "kind": {"type": "string", "enum": ["train", "predict"], "description": "train (default) or predict"},
        "name": {"type": "string", "description": "model name; published as <owner>.<name>"},
        "files": {**_STRING_OR_LIST, "description": "ROOT file URLs or upload paths, or an uploaded list"},
        "labels": {"oneOf": [{"type": "string"}, {"type": "array", "items": {}}]},
        "model": {
            **_NAME_OR_OBJECT,
            "description": "an uploaded model.py/.json, or a JSON model; predict: NAME[/VERSION] of yours",
        },
        "fout": {
            "type": "string",
            "description": "predict: a root:// directory for the friend trees (default: the job's download)",
        },
        "params": _NAME_OR_OBJECT,
        "preproc": _NAME_OR_OBJECT,
        "upload": {"type": "string", "description": "an upload id (default: your latest upload)"},
        "memory": {**_QUANTITY, "example": "3gb"},
        "cpus": _QUANTITY,
        "wall_time": {**_QUANTITY, "example": "2h"},
        "device": {"type": "string", "enum": ["cpu", "gpu"]},
        "workers": {
            "type": "integer",
            "minimum": 1,
            "description": "a Keras training spread over this many workers (data-parallel; at most "
            "max_workers_per_job and the live workers)",
        },
        "init_model": {
            "type": "string",
            "description": "<name>[/<version>] of one of your models to train further (default: its newest "
            "version); the job publishes the next version of that name",
            "example": "higgs/3",
        },
    },
    required=("files", "model"),
    other_types={
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "description": "file parts model, files, labels, params, preproc, archive (tar.gz); "
                "text fields of the same names; or one workflow field with the JSON",
            }
        }
    },
)


def submit_workflow(owner: str, body: Mapping[str, Any], source: Path | None) -> Job:
    """Validate a workflow request, build its job directory and queue it."""
    from appliance.server.predict_jobs import PREDICT, job_kind, submit_predict

    if job_kind(body) == PREDICT:
        return submit_predict(owner, body, source)
    queue = job_queue()
    config = queue.settings
    unknown = sorted(map(str, set(body) - WORKFLOW.keys))  # a multipart part may come without a name
    if unknown:
        raise BadInputError(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(WORKFLOW.keys))}"
        )
    missing = [key for key in ("files", "labels", "model") if body.get(key) in (None, "", [], {})]
    if missing:
        raise BadInputError(f"missing field(s) {', '.join(missing)}")
    if body.get("fout") not in (None, ""):
        raise BadInputError("fout is where a predict job writes its friend trees: a training takes none")
    name = body.get("name") or "model"
    if not isinstance(name, str):
        raise BadInputError(f"name must be a string, got {name!r}")
    resources = requested_resources(body, trains=True)
    init = _init_model(owner, body.get("init_model"), config.model_repository)
    if resources.workers > 1 and init is not None:
        raise BadInputError(f"init_model cannot train on {resources.workers} workers: ask for one worker")
    if init is not None:
        if body.get("name") and model_name(owner, name) != init.name:
            raise BadInputError(
                f"name {name!r} is not init_model {init.name!r}: a warm start publishes the next version of "
                "init_model's name (leave name out)"
            )
        name = init.name.partition(".")[2] or name
    quota_left(owner)
    if source is None:
        source = _upload_dir(owner, body.get("upload"))
    job_id = new_job_id()
    with staged_job_dir(config, job_id) as (staging, final):
        model_file, has_preproc = _write_inputs(body, source, staging, final, init)
        if resources.workers > 1:
            _refuse_other_framework(staging.model_file(model_file), resources.workers)
    job = Job(
        id=job_id,
        owner=owner,
        name=name,
        model_name=init.name if init is not None else model_name(owner, name),
        state=QUEUED,
        resources=resources.__dict__,
        created=time.time(),
        request={"model_file": model_file, "preproc": has_preproc}
        | ({"init_model": {"name": init.name, "version": init.version}} if init is not None else {}),
    )
    queue.submit(job)
    log.info("job %s queued for %s (%s)", job_id, owner, job.model_name)
    return job


def requested_resources(body: Mapping[str, Any], trains: bool = False) -> Resources:
    """The resources a job asks for, within the limits; a GPU only while some live worker has one, and
    several workers (a training only) only while that many live."""
    queue = job_queue()
    resources = Resources.from_request(body, queue.settings)
    if resources.workers > 1 and not trains:
        raise BadInputError("workers applies to a training; a predict job runs on one worker (and Dask)")
    if resources.device == "gpu" or resources.workers > 1:
        live = queue.store.live_workers(queue.settings.stale_after_s)
        if resources.device == "gpu":
            require_gpu_worker(live)
        require_live_workers(resources.workers, live)
    return resources


def _write_inputs(
    body: Mapping[str, Any], source: Path | None, job: JobDir, final: JobDir, init: InitModel | None
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
    if init is not None:
        check_workflow(init, workflow, params)
    # The job sees the directory at its final place.
    job.files_list.write_text(
        "".join(f"{str(path).replace(str(job.inputs), str(final.inputs), 1)}\n" for path in resolved)
    )
    return model_file, preproc is not None


def _init_model(owner: str, value: Any, repository: Path) -> InitModel | None:
    """The caller's published model a warm start begins from: ``<name>[/<version>]``, the name in full
    (``<owner namespace>.<name>``) or without the namespace; the newest version unless one is given. As for a
    predict job's model (``predict_jobs.own_model``), another user's model is as unknown as a missing one
    (404), so that nobody learns which names others use; any bundle kind may be started from."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadInputError(f"init_model must be a string <name>[/<version>], got {value!r}")
    text, _, version_text = value.strip().partition("/")
    if not NAME.match(text) or (version_text and not version_text.isdigit()):
        raise BadInputError(f"init_model {value!r} is not <name>[/<version>]")
    name = text if owns(owner, text) else model_name(owner, text)
    present = versions(repository / name)
    if not present:
        raise NotFoundError(
            f"init_model {value!r}: no model {name!r} of yours in the model repository "
            f"(your models are named {owner_namespace(owner)}.<name>)"
        )
    version = int(version_text) if version_text else present[-1]
    if version not in present:
        raise NotFoundError(
            f"init_model {value!r}: {name!r} has no version {version} (it has {', '.join(map(str, present))})"
        )
    init = read_init_model(repository / name / str(version))
    init.name, init.version = name, version
    return init


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
    raise BadInputError(
        f"files entry {entry!r} references nothing uploaded and is not a URL (root://...); "
        "upload it, give its URL, or set a redirector in params"
    )


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


def _refuse_other_framework(model: Path, workers: int) -> None:
    """Only Keras trains on several workers; a JSON model says its framework (a model.py only when it runs:
    the job then fails naming it)."""
    if model.suffix != ".json":
        return
    refuse_framework(json.loads(model.read_text()).get("framework", "keras"), workers)


def _check_urls(urls: list[str]) -> None:
    """Stat every XRootD input now, so an unreadable URL is a 400 instead of a failed job later; and refuse
    one that names a server the job will not be able to reach from its network namespace."""
    settings = job_queue().settings
    remote = [url for url in urls if url.startswith(XROOTD_SCHEMES)]
    if not remote:
        return
    from XRootD.client import URL, FileSystem

    for url in remote:
        parsed = URL(url)
        if not parsed.is_valid():
            raise BadInputError(f"input URL {url!r} is not a valid XRootD URL")
        # Like the worker, which isolates jobs only when it is root: an API that is not root is taken to
        # serve workers that are not either (the Ansible role's units today), whose jobs share the network.
        if settings.job_network == "isolated" and os.geteuid() == 0:
            _check_reachable(url, parsed.hostname.strip("[]"), parsed.port, settings.job_network_allow)
    if not settings.check_urls:
        return
    for url in remote:
        parsed = URL(url)
        status, _ = FileSystem(f"{parsed.protocol}://{parsed.hostid}").stat(
            parsed.path_with_params, timeout=settings.url_check_timeout_s
        )
        if not status.ok:
            raise BadInputError(f"cannot read input {url!r}: {status.message.strip()}")


def _check_reachable(url: str, host: str, port: int, allow: str) -> None:
    """Jobs reach only ``job_network_allow`` (``appliance.server.network``): the URL must name one of them."""
    allowed = {(ipaddress.ip_address(e.address), e.port) for e in parse_endpoints(allow)}
    try:
        addresses = {
            ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        }
    except (OSError, ValueError):
        addresses = set()
    if not any((address, port) in allowed for address in addresses):
        raise BadInputError(
            f"input URL {url!r} names a server that jobs cannot reach: read it through the XRootD proxy "
            f"(jobs reach only {allow})"
        )


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
    return job_queue().settings.uploads_dir / owner_namespace(owner)


def store_upload(owner: str) -> dict[str, Any]:
    """Extract the request's tar archive into a new upload of ``owner`` (built aside, renamed into place);
    it becomes the owner's latest upload, which ``/submit`` uses unless the request names another."""
    base = _owner_uploads(owner)
    upload_id = new_job_id()
    staging = base / INCOMING / upload_id
    staging.mkdir(parents=True)
    try:
        files = _receive_archive(staging, owner)
        _make_readable(staging)
        staging.rename(base / upload_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = base / f".{LATEST_UPLOAD}-{upload_id}"
    pointer.write_text(upload_id)
    pointer.replace(base / LATEST_UPLOAD)
    return {"upload": upload_id, "files": sorted(str(path.relative_to(staging)) for path in files)}


@contextlib.contextmanager
def staged_job_dir(config: Settings, job_id: str) -> Iterator[tuple[JobDir, JobDir]]:
    """A new job's directory, written under a staging name and renamed into place when the ``with`` body
    ends without error (removed otherwise): a job is never seen half-written. Yields ``(staging, final)``:
    write into ``staging``; paths a job reads at run time name ``final``."""
    final, staging = JobDir.of(config, job_id), JobDir.staging(config, job_id)
    staging.root.mkdir(parents=True)
    try:
        yield staging, final
        _make_readable(staging.root)
        # Private to the server until a worker opens it to the job's own uid.
        staging.root.chmod(PRIVATE_MODE)
        staging.root.rename(final.root)
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise


def _receive_archive(directory: Path, owner: str) -> list[Path]:
    settings = job_queue().settings
    if request.mimetype == "multipart/form-data":
        parts = list(request.files.values())
        if len(parts) != 1:
            raise BadInputError("send one tar.gz file part (or the archive as the request body)")
        stream = parts[0].stream
    else:
        stream = request.stream
    left = quota_left(owner)
    limit = settings.max_upload_bytes if left is None else min(settings.max_upload_bytes, left)
    try:
        return extract_archive(stream, directory, max_bytes=limit, max_members=settings.max_upload_members)
    except BadInputError as err:
        # safetar stops a bomb at the byte limit it was given; when that limit was the quota, say so.
        if limit != settings.max_upload_bytes and err.message.startswith(UNPACKS_TOO_LARGE):
            raise InsufficientStorageError(
                f"this upload would take you over your disk quota of {settings.disk_quota_bytes} bytes "
                f"({left} left): delete old uploads or jobs"
            ) from None
        raise


# -- quota ------------------------------------------------------------------------------------------------


def disk_usage(owner: str) -> int:
    """Bytes under the owner's uploads and job directories, each file counted once (uploads are linked
    into the jobs that use them)."""
    queue = job_queue()
    roots = [_owner_uploads(owner)]
    roots += [queue.job_dir(job.id).root for job in queue.store.list(owner=owner, limit=1_000_000)]
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                with contextlib.suppress(OSError):
                    info = os.lstat(Path(directory, name))
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_size
    return total


def quota_left(owner: str) -> int | None:
    """Bytes the owner may still add (None: no quota); 507 when there is nothing left."""
    quota = job_queue().settings.disk_quota_bytes
    if not quota:
        return None
    used = disk_usage(owner)
    if used >= quota:
        raise InsufficientStorageError(
            f"your uploads and jobs use {used} bytes, your disk quota is {quota}: delete old uploads or jobs"
        )
    return quota - used


def quota_view(owner: str) -> dict[str, int | None]:
    """What the answers state about the owner's disk: bytes used, and the quota (None: no quota)."""
    return {"used_bytes": disk_usage(owner), "quota_bytes": job_queue().settings.disk_quota_bytes or None}


def json_request() -> dict[str, Any]:
    """The request's JSON object, within ``max_json_bytes`` (chunked bodies too), not the upload limit."""
    limit = job_queue().settings.max_json_bytes
    too_large = f"the JSON body is too large (the limit is {limit} bytes)"
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(too_large)
    # A chunked body has no length: read one byte past the limit to know it went past (werkzeug stops there).
    request.max_content_length = limit + 1
    if len(request.get_data(cache=True)) > limit:
        raise PayloadTooLargeError(too_large)
    return json_body(PROTOTYPE_BODY_TYPES)  # reads the cached body


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


def submit_multipart(owner: str) -> Job:
    """``POST /jobs`` as multipart: file parts (``model``, ``files``, ``labels``, ``params``, ``preproc``,
    any data file, and ``archive``, a tar.gz extracted safely) and text fields of the same names, or one
    ``workflow`` field holding the JSON request."""
    settings = job_queue().settings
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
        return submit_workflow(owner, body, source=None)
    staging = settings.jobs_dir / INCOMING / f"upload-{new_job_id()}"
    staging.mkdir(parents=True)
    try:
        for field_name, part in request.files.items(multi=True):
            if field_name == "archive":
                extract_archive(
                    part.stream,
                    staging,
                    max_bytes=settings.max_upload_bytes,
                    max_members=settings.max_upload_members,
                )
                continue
            filename = secure_filename(part.filename or "") or secure_filename(field_name)
            if not filename:
                raise BadInputError(f"file part {field_name!r} has no usable file name")
            part.save(staging / filename)
            if field_name in ("model", "files", "labels", "params", "preproc"):
                body[field_name] = filename
        return submit_workflow(owner, body, source=staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
