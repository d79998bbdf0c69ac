"""Workflows on the user's disk: the local files a workflow names are uploaded with it; jobs are followed
and their results downloaded.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mlaas4hep_client.api import Api
from mlaas4hep_client.options import (
    DOWNLOAD_CHUNK,
    FILE_KEYS,
    FINAL_STATES,
    PLOTS,
    SUCCEEDED,
    ClientError,
    HttpError,
)


@dataclass
class PreparedWorkflow:
    """A workflow request whose local files are renamed to their names in ``archive`` (empty: none local)."""

    body: dict[str, Any]
    archive: dict[str, Path]  # name in the upload -> local file


def prepare_workflow(path: Path, kind: str | None = None) -> PreparedWorkflow:
    """Read a workflow JSON (the body of ``POST /jobs``; docs/server.md) and find the local files it names.

    ``kind`` (``train`` or ``predict``) overrides the workflow's; a predict job's ``model`` names a model in
    the repository, never a local file.

    A string value of ``files``, ``labels``, ``model``, ``params`` or ``preproc`` that names an existing file
    (relative to the workflow's folder) is uploaded; so is each entry of ``files`` (a list, or a local list
    file, one entry a line) that is a local file. URLs and anything else go to the server unchanged: it
    checks them (a label branch name, a ``redirector`` path, a file of an earlier ``upload``).
    """
    try:
        body = json.loads(path.read_text())
    except OSError as err:
        raise ClientError(f"cannot read the workflow {str(path)!r}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ClientError(f"the workflow {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ClientError(f"the workflow {str(path)!r} must hold a JSON object")
    if kind is not None:
        body["kind"] = kind
    base = path.resolve().parent
    archive: dict[str, Path] = {}

    def upload(value: str) -> str:
        local = _local_file(base, value)
        if local is None:
            return value
        name = _archive_name(base, local, len(archive))
        archive.setdefault(name, local)
        return name

    files = body.get("files")
    if isinstance(files, str) and _local_file(base, files) is not None:
        files = _list_file_entries(_local_file(base, files))  # type: ignore[arg-type]
    if isinstance(files, list):
        body["files"] = [upload(entry) if isinstance(entry, str) else entry for entry in files]
    for key in FILE_KEYS[1:]:
        if key == "model" and body.get("kind") == "predict":
            continue
        if isinstance(body.get(key), str):
            body[key] = upload(body[key])
    return PreparedWorkflow(body, archive)


def _local_file(base: Path, value: str) -> Path | None:
    if not value.strip() or "://" in value or "\n" in value:
        return None
    path = (base / value.strip()).resolve()
    return path if path.is_file() else None


def _archive_name(base: Path, local: Path, index: int) -> str:
    """The workflow's folder is the upload's root; files outside it go to ``external/<n>/``."""
    try:
        return PurePosixPath(*local.relative_to(base).parts).as_posix()
    except ValueError:
        return f"external/{index}/{local.name}"


def _list_file_entries(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_archive(files: Mapping[str, Path], out: IO[bytes]) -> None:
    """A tar.gz of regular files only (what the server's safe extraction accepts)."""
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with path.open("rb") as data:
                tar.addfile(info, data)


def submit_workflow(api: Api, prepared: PreparedWorkflow) -> dict[str, Any]:
    """Upload the local files (``POST /upload``, streamed from a temporary tar.gz), then ``POST /jobs``."""
    body = dict(prepared.body)
    if prepared.archive:
        with tempfile.TemporaryFile() as archive:
            write_archive(prepared.archive, archive)
            archive.seek(0)
            uploaded = api.json("POST", "/upload", data=archive, headers={"Content-Type": "application/gzip"})
        body["upload"] = uploaded["upload"]
    return api.json("POST", "/jobs", json=body)


def describe_job(job: Mapping[str, Any]) -> str:
    """One line on a job's state and progress, for people."""
    progress = job.get("progress") or {}
    parts = [f"{job.get('id', '?')} {job.get('state', '?')}"]
    if progress.get("stage"):
        parts.append(f"stage {progress['stage']}")
    if progress.get("epochs"):
        parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
    if progress.get("events_read") is not None:
        rate = progress.get("events_per_s")
        parts.append(f"{progress['events_read']} events" + (f" ({rate:.0f}/s)" if rate else ""))
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4g}")
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    return ", ".join(parts)


def follow_job(
    api: Api,
    job_id: str,
    interval_s: float = 2.0,
    logs: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Poll ``GET /jobs/<id>`` until the job ends, saying each new progress line (and log text); the job."""
    last = None
    offset = 0
    while True:
        job = api.json("GET", f"/jobs/{job_id}")
        if logs:
            response = api.request("GET", f"/jobs/{job_id}/logs", params={"offset": offset})
            if response.content:
                say(response.content.decode(errors="replace").rstrip("\n"))
            offset = int(response.headers.get("X-Log-Offset", offset + len(response.content)))
        line = describe_job(job)
        if line != last:
            say(line)
            last = line
        if job.get("state") in FINAL_STATES:
            return job
        time.sleep(interval_s)


def download_results(api: Api, job_id: str, folder: Path, plots: bool = True) -> list[Path]:
    """The job's bundle as ``<model name>.tar.gz`` and its plots, written whole or not at all; a predict
    job's friend trees as ``<job>-friends.tar.gz``."""
    job = api.json("GET", f"/jobs/{job_id}")
    if job.get("state") != SUCCEEDED:
        raise ClientError(f"job {job_id} is {job.get('state')}: only a succeeded job has results to download")
    folder.mkdir(parents=True, exist_ok=True)
    if job.get("kind") == "predict":
        if "friends" not in (job.get("links") or {}):
            output = (job.get("result") or {}).get("output")
            raise ClientError(f"job {job_id} wrote its friend trees to {output}: nothing to download")
        return [
            _download(api, f"/jobs/{job_id}/friends", folder / f"{_safe_file_name(job_id)}-friends.tar.gz")
        ]
    name = _safe_file_name(str(job.get("model_name") or job_id))
    written = [_download(api, f"/jobs/{job_id}/model", folder / f"{name}.tar.gz")]
    if plots:
        for plot in PLOTS:
            target = folder / f"{name}.{plot}.png"
            try:
                written.append(_download(api, f"/jobs/{job_id}/plots/{plot}.png", target))
            except HttpError as err:
                if err.status != 404:  # a job may make no plot of a kind (no loss curve without epochs)
                    raise
    return written


def _safe_file_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return cleaned or "model"


def _download(api: Api, path: str, target: Path) -> Path:
    response = api.request("GET", path, stream=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                out.write(chunk)
        Path(temporary).chmod(0o644)
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        response.close()
    return target
