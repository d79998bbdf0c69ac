"""Predict jobs through the API: a model of the caller's applied to ROOT files, friend trees as the result.

``POST /jobs`` with ``"kind": "predict"`` (the same body declaration as a training, ``submission.WORKFLOW``)::

    {"kind": "predict", "model": "NAME[/VERSION]", "files": [...], "fout": "root://proxy//dir" (optional)}

What can be checked at submission is checked here, so that it is a 4xx and not a failed job: the model exists
in the model repository and is the caller's (404 otherwise, as another user's job is), the files are given
and readable (the training's rules: URLs, upload paths, the XRootD stat), a ``fout`` is a ``root://``
directory the job can reach that holds no friend tree of the same name yet, and, where it is cheap (a local
file, or a URL when ``check_urls`` is on, for the first ``SUBMIT_CHECKED_FILES`` files), the files hold the
branches the model's feature spec and cuts read. The job itself runs ``mlaas4hep predict`` like a training
(``appliance.server.runner``); its worker side is ``appliance.server.predict_worker``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.inference.bundle import load_bundle, resolve_bundle
from appliance.inference.friends import Destination, friend_names
from appliance.inference.predict import MANIFEST, refuse_missing
from appliance.inference.scoring import check_file
from appliance.server.context import job_queue
from appliance.server.jobdir import JobDir
from appliance.server.predict_worker import PREDICT, TRAIN
from appliance.server.queue import new_job_id
from appliance.server.store import QUEUED, Job
from appliance.server.submission import (
    XROOTD_SCHEMES,
    _check_reachable,
    _check_urls,
    _files_entries,
    _link_or_copy,
    _resolve_entry,
    _upload_dir,
    quota_left,
    requested_resources,
    staged_job_dir,
)
from servicecore.errors import BadInputError, NotFoundError
from servicecore.naming import model_name, owner_namespace, owns

KINDS = (TRAIN, PREDICT)
# The fields a predict job takes; the workflow's others (labels, params, ...) belong to a training.
PREDICT_FIELDS = frozenset(
    {"kind", "model", "files", "fout", "upload", "name", "memory", "cpus", "wall_time", "device"}
)
SUBMIT_CHECKED_FILES = 16  # files opened at submission to compare their branches with the model's needs


def job_kind(body: Mapping[str, Any]) -> str:
    kind = body.get("kind") or TRAIN
    if kind not in KINDS:
        raise BadInputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def submit_predict(owner: str, body: Mapping[str, Any], source: Path | None) -> Job:
    """Validate a predict request, build its job directory (files list only: the worker stages the model
    bundle when the job starts) and queue it."""
    queue = job_queue()
    config = queue.settings
    unknown = sorted(map(str, set(body) - PREDICT_FIELDS))  # a multipart part may come without a name
    if unknown:
        raise BadInputError(
            f"a predict job takes no {', '.join(unknown)}; its fields: {', '.join(sorted(PREDICT_FIELDS))}"
        )
    missing = [key for key in ("model", "files") if body.get(key) in (None, "", [], {})]
    if missing:
        raise BadInputError(f"missing field(s) {', '.join(missing)}")
    name, version, bundle_dir = own_model(owner, body["model"], config.model_repository)
    short_name = name.partition(".")[2] or name
    fout = _destination(body.get("fout"))
    resources = requested_resources(body)
    quota_left(owner)
    if source is None:
        source = _upload_dir(owner, body.get("upload"))

    job_id = new_job_id()
    with staged_job_dir(config, job_id) as (staging, final):
        urls, shown = _write_files(body["files"], source, staging, final)
        _check_dask_inputs(config.dask_scheduler, urls, shown)
        _check_branches(bundle_dir, urls, shown, check_remote=config.check_urls)
        if fout is not None and config.check_urls:
            Destination(None, fout).refuse_existing([*friend_names(urls), MANIFEST])
    job = Job(
        id=job_id,
        owner=owner,
        # The job's own label (the prototype's /submit requires one); by default the model's short name.
        name=body.get("name") if isinstance(body.get("name"), str) and body.get("name") else short_name,
        model_name=name,
        state=QUEUED,
        resources=resources.__dict__,
        created=time.time(),
        request={"kind": PREDICT, "model": name, "version": version, "fout": fout},
    )
    queue.submit(job)
    return job


def own_model(owner: str, reference: Any, repository: Path) -> tuple[str, int, Path]:
    """``NAME[/VERSION]`` of the caller's: the full name (``<namespace>.<name>``, or the short name, which
    the caller's namespace is put before), its version (the newest when none is given) and its bundle.
    Another user's model is as unknown as one that does not exist: 404."""
    if not isinstance(reference, str) or not reference.strip():
        raise BadInputError(f"model must be NAME or NAME/VERSION of one of your models, got {reference!r}")
    name, _, version_text = reference.strip().partition("/")
    if not owns(owner, name):
        name = model_name(owner, name)
    try:
        bundle_dir = resolve_bundle(f"{name}/{version_text}" if version_text else name, repository, None)
    except BadInputError as err:
        if "version must be" in err.message or "not valid" in err.message:
            raise
        raise NotFoundError(
            f"no model {reference.strip()!r} of yours in the model repository "
            f"(your models are named {owner_namespace(owner)}.<name>)"
        ) from None
    bundle = load_bundle(bundle_dir)
    version = bundle.version or int(version_text or 1)
    return name, version, bundle_dir


def _destination(value: Any) -> str | None:
    """``fout``: a ``root://`` directory URL the job can reach (the XRootD proxy), or None: the download."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith(XROOTD_SCHEMES):
        raise BadInputError(
            f"fout must be a root:// directory URL (through the XRootD proxy), got {value!r}; "
            "leave it out to download the friend trees from the job"
        )
    settings = job_queue().settings
    from XRootD.client import URL

    parsed = URL(value)
    if not parsed.is_valid() or not parsed.path.strip("/"):
        raise BadInputError(f"fout {value!r} is not a valid XRootD directory URL")
    # As for the inputs (submission._check_urls): a root API serves root workers, which isolate jobs.
    if settings.job_network == "isolated" and os.geteuid() == 0:
        _check_reachable(value, parsed.hostname.strip("[]"), parsed.port, settings.job_network_allow)
    return value.rstrip("/")


def _write_files(value: Any, source: Path | None, job: JobDir, final: JobDir) -> tuple[list[str], list[str]]:
    """The job's files.txt, by the training's rules (URLs as they are, local paths inside the upload);
    returns the files as this process reads them, and as the user named them (for messages)."""
    job.inputs.mkdir(parents=True)
    upload = None
    if source is not None:
        shutil.copytree(source, job.upload, copy_function=_link_or_copy)
        upload = job.upload
    entries = _files_entries(value, upload)
    resolved = [_resolve_entry(entry, upload, "") for entry in entries]
    _check_urls(resolved)
    # What the API checks is the staging copy; the job reads the same files at the final place.
    job.files_list.write_text(
        "".join(f"{path.replace(str(job.inputs), str(final.inputs), 1)}\n" for path in resolved)
    )
    return resolved, entries


def _check_dask_inputs(scheduler: str, urls: list[str], shown: list[str]) -> None:
    """On the appliance's Dask scheduler the Dask workers read the files, and they cannot read the job's
    uploaded copies (private to the job's uid, on another host maybe): root:// URLs only, a 400 otherwise."""
    local = [name for url, name in zip(urls, shown, strict=True) if not url.startswith(XROOTD_SCHEMES)]
    if scheduler and local:
        raise BadInputError(
            "predict jobs run on the appliance's Dask scheduler, whose workers read root:// URLs (the "
            f"XRootD proxy) only, not uploaded files: {', '.join(map(repr, local[:3]))}"
            + (f" and {len(local) - 3} more" if len(local) > 3 else "")
        )


def _check_branches(bundle_dir: Path, urls: list[str], shown: list[str], check_remote: bool) -> None:
    """The first files' branches against what the model reads: a 400 naming the missing ones, not a job
    that fails later. Remote files only when URLs are checked at all (``check_urls``)."""
    bundle = load_bundle(bundle_dir)
    needed = bundle.needed_branches()
    cheap = [(url, name) for url, name in zip(urls, shown, strict=True)]
    cheap = [(url, name) for url, name in cheap if check_remote or not url.startswith(XROOTD_SCHEMES)]
    checks = [
        dataclasses.replace(check_file(url, bundle.tree, needed), url=name)
        for url, name in cheap[:SUBMIT_CHECKED_FILES]
    ]
    refuse_missing(bundle, checks)
