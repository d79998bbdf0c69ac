"""The worker's side of a predict job: its friend trees checked out and archived, its result.

Before the job starts, the runner copies the model version the API resolved at submission from the model
repository into ``inputs/bundle`` (``JobRun._stage_model``, as a warm start's): the job reads that copy,
never the repository, which stays closed to jobs. When the job has succeeded and every process of it is
gone, the friend trees it wrote into ``work/friends`` are copied, following no link and trusting nothing
(``publisher``'s checks: regular files of the job's uid, one link, bounded bytes), into the server's
``friends/``, and archived as ``friends.tar.gz`` for download. Only ``<stem>_scores.root`` files and
``predict.json`` are taken; a job that wrote to a ``root://`` destination leaves nothing to copy, and its
result comes from its stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.server.jobdir import JobDir
from appliance.server.progress import read_confined
from appliance.server.publisher import MAX_JSON_BYTES, BundleRefused, BundleRules, _check_entry, _Counter
from servicecore import atomic
from servicecore.publishing import staging_directory

PREDICT = "predict"
TRAIN = "train"
FRIEND_SUFFIX = "_scores.root"
MANIFEST = "predict.json"
MAX_FRIENDS = 10_000


def is_predict(request: Mapping[str, Any]) -> bool:
    return request.get("kind") == PREDICT


def collect_friends(job: JobDir, rules: BundleRules) -> dict[str, Any]:
    """Check and copy ``work/friends`` to ``friends/``, archive it; returns its predict.json. Raises
    ``BundleRefused`` (nothing is left at ``friends/`` then)."""
    staging = staging_directory(job.root, ".friends.")
    try:
        try:
            root = os.open(job.work_friends, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY)
        except OSError as err:
            raise BundleRefused(f"the job wrote no friends directory ({err.strerror})") from None
        try:
            _check_entry(os.fstat(root), "friends/", rules)
            names = sorted(os.listdir(root))  # noqa: PTH208 - a directory descriptor
            if MANIFEST not in names:
                raise BundleRefused(f"the job wrote no {MANIFEST}")
            counter = _Counter(rules.max_bytes)
            for name in names:
                if name.startswith(".predict-"):
                    continue  # a staging directory the job's predict removes; never copied
                if name != MANIFEST and not name.endswith(FRIEND_SUFFIX):
                    raise BundleRefused(f"friends/{name} is not a friend tree")
                _copy_file(root, name, staging / name, rules, counter)
        finally:
            os.close(root)
        if len(names) > MAX_FRIENDS:
            raise BundleRefused(f"the job wrote more than {MAX_FRIENDS} files")
        summary = summary_json((staging / MANIFEST).read_bytes())
        shutil.rmtree(job.friends, ignore_errors=True)
        staging.rename(job.friends)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with atomic.atomic_file(job.friends_archive) as out, tarfile.open(fileobj=out, mode="w:gz") as archive:
        archive.add(job.friends, arcname="friends")
    return summary


def _copy_file(directory: int, name: str, target: Path, rules: BundleRules, counter: _Counter) -> None:
    where = f"friends/{name}"
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    try:
        info = os.fstat(fd)
        _check_entry(info, where, rules)
        if not stat.S_ISREG(info.st_mode):
            raise BundleRefused(f"{where} is not a regular file")
        counter.add(info.st_size, where)
        with os.fdopen(os.dup(fd), "rb") as source, target.open("xb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            if out.tell() != info.st_size:
                raise BundleRefused(f"{where} changed while it was copied")
    finally:
        os.close(fd)


def stdout_summary(job: JobDir) -> dict[str, Any]:
    """The one JSON line ``mlaas4hep predict`` printed (its summary), read confined and bounded."""
    try:
        text = read_confined(job.root, job.result.name, max_bytes=MAX_JSON_BYTES)
    except OSError:
        return {}
    lines = [line for line in text.splitlines() if line.strip()]
    return summary_json(lines[-1]) if lines else {}


def summary_json(text: bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def predict_result(summary: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """A predict job's result: the model, where the friend trees went, and counts (numbers and names only:
    the job wrote the summary)."""
    files = summary.get("files")
    return {
        "kind": PREDICT,
        "name": str(request.get("model", "")),
        "version": request.get("version"),
        "output": request.get("fout") or "download",
        "events": _count(summary.get("events")),
        "passed": _count(summary.get("passed")),
        "branches": [b for b in summary.get("branches", []) if isinstance(b, str)][:64],
        "engine": _engine(summary.get("engine")),
        "files": [
            {
                "input": str(f.get("input", "")),
                "friend": str(f.get("friend", "")),
                "entries": _count(f.get("entries")),
                "passed": _count(f.get("passed")),
            }
            for f in files[:MAX_FRIENDS]
            if isinstance(f, dict)
        ]
        if isinstance(files, list)
        else _count(files),
    }


def _engine(value: Any) -> dict[str, Any]:
    """Which Dask ran the job: ``scheduler`` ("local" or its address), ``bundle`` ("path" or "shipped") and
    the workers and threads it had."""
    engine = value if isinstance(value, dict) else {}
    return {
        "scheduler": str(engine.get("scheduler", ""))[:256],
        "bundle": str(engine.get("bundle", ""))[:16],
        "workers": _count(engine.get("workers")),
        "threads": _count(engine.get("threads")),
    }


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
