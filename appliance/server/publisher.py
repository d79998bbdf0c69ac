"""The worker's side of a finished job: check the bundle the job wrote, copy it out, publish and archive it.

The job runs untrusted user code, so nothing it wrote is taken on trust. Once every process of the job is
gone, ``checked_copy`` walks ``work/bundle`` through directory descriptors, following no link, and copies it
into the server's part of the job directory, refusing the whole bundle when it is not a proper one: a
missing file, an unknown entry, a link, a special file, a file with other links, a file the job's uid does
not own, too many entries or bytes, a ``params.json`` that is not an object naming this job's model. Only
the checked copy is then published into the model repository (``servicecore.publishing``), archived for
download and mined for plots; the job itself can write none of those places.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.server.jobdir import PLOTS, JobDir
from servicecore import atomic
from servicecore.publishing import publish, staging_directory

REQUIRED_FILES = ("params.json", "labels.txt", "metrics.json")
# What each kind of bundle holds beside them, by its params.json "model" (appliance.training.bundle): a
# SavedModel, or a PyTorch or scikit-learn/XGBoost model as model.onnx with its framework's own files in
# native/ (model.onnx is absent when it could not be converted: the bundle then says servable false).
MODEL_ENTRIES = {
    "saved_model.pb": {"files": ("saved_model.pb",), "directories": ("variables",)},
    "model.onnx": {"files": (), "directories": ("native",)},
}
OPTIONAL_ENTRIES = ("assets", "fingerprint.pb", "model.onnx", *(f"{plot}.png" for plot in PLOTS))
MAX_ENTRIES = 10_000
MAX_DEPTH = 8
MAX_JSON_BYTES = 16 << 20
COPY_CHUNK = 1 << 20


class BundleRefused(Exception):  # noqa: N818 - the worker's verdict on a job's output, not a crash
    """The job's output is not a proper bundle; the message says why (shown to the job's owner)."""


@dataclass(frozen=True)
class BundleRules:
    model_name: str
    owner_uid: int  # the uid every entry must belong to: the job's
    max_bytes: int


def checked_copy(source: Path, destination: Path, rules: BundleRules) -> dict[str, Any]:
    """Copy the bundle at ``source`` (the job's) to ``destination`` (the server's) if it is a proper one.

    Returns its ``params.json``. Raises ``BundleRefused``; nothing is left at ``destination`` then.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(destination.parent, f".{destination.name}.")
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY
        try:
            root = os.open(source, flags)
        except OSError as err:
            raise BundleRefused(f"the job wrote no bundle directory ({err.strerror})") from None
        try:
            _check_entry(os.fstat(root), "bundle/", rules)
            counter = _Counter(rules.max_bytes)
            names = set(os.listdir(root))  # noqa: PTH208 - a directory descriptor
            missing = [n for n in REQUIRED_FILES if n not in names]
            if missing:
                raise BundleRefused(f"the bundle lacks {', '.join(missing)}")
            allowed = {*REQUIRED_FILES, *OPTIONAL_ENTRIES}
            allowed |= {n for entries in MODEL_ENTRIES.values() for kind in entries.values() for n in kind}
            unknown = sorted(names - allowed)
            if unknown:
                raise BundleRefused(f"the bundle holds unexpected entries: {', '.join(unknown)}")
            _copy_directory(root, staging, "", rules, counter, depth=0)
        finally:
            os.close(root)
        for name in REQUIRED_FILES:
            if not (staging / name).is_file():
                raise BundleRefused(f"the bundle's {name} is not a file")
        params = _json_object(staging / "params.json")
        if params.get("name") != rules.model_name:
            raise BundleRefused(
                f"the bundle's params.json names the model {params.get('name')!r}, not {rules.model_name!r}"
            )
        entries = MODEL_ENTRIES.get(params.get("model"))  # type: ignore[arg-type]
        if entries is None or not isinstance(params.get("features"), dict):
            raise BundleRefused("the bundle's params.json is not the training's (model or features missing)")
        files = [
            *entries["files"],
            *(["model.onnx"] if params["model"] == "model.onnx" and params.get("servable", True) else []),
        ]
        lacking = [n for n in files if not (staging / n).is_file()]
        lacking += [n for n in entries["directories"] if not (staging / n).is_dir()]
        if lacking:
            raise BundleRefused(f"the bundle lacks {', '.join(lacking)}")
        strays = [n for n in ("saved_model.pb", "variables", "native") if (staging / n).exists()]
        strays = [n for n in strays if n not in (*entries["files"], *entries["directories"])]
        if strays:
            raise BundleRefused(
                f"the bundle holds {', '.join(strays)}, which a {params['model']} bundle has not"
            )
        _json_object(staging / "metrics.json")
        shutil.rmtree(destination, ignore_errors=True)
        staging.rename(destination)
        return params
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class _Counter:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries = 0

    def add(self, size: int, where: str) -> None:
        self.entries += 1
        self.bytes += size
        if self.entries > MAX_ENTRIES:
            raise BundleRefused(f"the bundle has more than {MAX_ENTRIES} entries")
        if self.bytes > self.max_bytes:
            raise BundleRefused(f"the bundle is larger than {self.max_bytes} bytes (at {where})")


def _check_entry(info: os.stat_result, where: str, rules: BundleRules) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise BundleRefused(f"{where} is a symbolic link")
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise BundleRefused(f"{where} is not a regular file or directory")
    if info.st_uid != rules.owner_uid:
        raise BundleRefused(f"{where} belongs to uid {info.st_uid}, not to the job")
    if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
        raise BundleRefused(f"{where} has other hard links")


def _copy_directory(
    directory_fd: int, target: Path, prefix: str, rules: BundleRules, counter: _Counter, depth: int
) -> None:
    if depth > MAX_DEPTH:
        raise BundleRefused(f"the bundle nests deeper than {MAX_DEPTH} levels at {prefix}")
    for name in sorted(os.listdir(directory_fd)):
        where = f"bundle/{prefix}{name}"
        info = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
        _check_entry(info, where, rules)
        counter.add(info.st_size if stat.S_ISREG(info.st_mode) else 0, where)
        if stat.S_ISDIR(info.st_mode):
            child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=directory_fd)
            try:
                _check_entry(os.fstat(child), where, rules)
                (target / name).mkdir()
                _copy_directory(child, target / name, f"{prefix}{name}/", rules, counter, depth + 1)
            finally:
                os.close(child)
            continue
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory_fd)
        try:
            opened = os.fstat(fd)
            _check_entry(opened, where, rules)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise BundleRefused(f"{where} changed while it was checked")
            with os.fdopen(os.dup(fd), "rb") as source, (target / name).open("xb") as out:
                copied = 0
                while chunk := source.read(COPY_CHUNK):
                    copied += len(chunk)
                    if copied > opened.st_size:
                        raise BundleRefused(f"{where} grew while it was copied")
                    out.write(chunk)
        finally:
            os.close(fd)


def _json_object(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise BundleRefused(f"the bundle's {path.name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleRefused(f"the bundle's {path.name} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise BundleRefused(f"the bundle's {path.name} is not a JSON object")
    return value


def deliver(job: JobDir, model_name: str, repository: Path) -> dict[str, Any]:
    """Publish the checked bundle, archive it for download and keep its plots; returns the job's result."""
    published, version = publish(job.bundle, repository, model_name)
    job.plots.mkdir(exist_ok=True)
    for name in PLOTS:
        source = job.bundle / f"{name}.png"
        if source.is_file():
            atomic.write_bytes(job.plot(name), source.read_bytes())
    with atomic.atomic_file(job.model_archive) as out, tarfile.open(fileobj=out, mode="w:gz") as archive:
        archive.add(job.bundle, arcname=model_name)
    metrics = _json_object(job.bundle / "metrics.json")
    test = metrics.get("test")
    return {
        "bundle": str(job.bundle),
        "published": str(published),
        "name": model_name,
        "version": version,
        "metrics": test if isinstance(test, dict) else {},
    }
