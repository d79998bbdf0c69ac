"""Reading what a job wrote: its progress summary, its last error, without trusting the job's files.

``work/`` belongs to the job, which may have planted links or special files there: everything is read with
``read_confined``, which follows no link at any step and reads only regular files, at most so many bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from appliance.server.jobdir import JobDir

PROGRESS_KEYS = (
    "stage",
    "epoch",
    "epochs",
    "events_read",
    "events_per_s",
    "loss",
    "val_loss",
    "events",
    "features",
    "files",
    "done",
    "time",
)
WORKER_LINE = "[mlaas4hep "


def read_confined(base: Path, *parts: str, max_bytes: int, tail: bool = False) -> bytes:
    """Read ``base/parts...`` without following a link at any step below ``base``; only a regular file."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    fds = [os.open(base, flags | os.O_DIRECTORY)]
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        fd = os.open(parts[-1], flags, dir_fd=fds[-1])
        fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{'/'.join(parts)} is not a regular file")
        if info.st_size > max_bytes and not tail:
            raise OSError(f"{'/'.join(parts)} is larger than {max_bytes} bytes")
        if tail:
            os.lseek(fd, max(0, info.st_size - max_bytes), os.SEEK_SET)
        chunks, left = [], max_bytes
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_progress(job: JobDir, tail_bytes: int = 65_536) -> dict[str, Any]:
    """A summary of the job's progress file: the stage, epoch, events read and rate, the last loss."""
    try:
        text = read_confined(job.work, JobDir.PROGRESS, max_bytes=tail_bytes, tail=True)
    except OSError:
        return {}
    lines = text.decode(errors="replace").splitlines()
    summary: dict[str, Any] = {}
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                summary.update({key: event[key] for key in PROGRESS_KEYS if key in event})
    return summary


def last_error(job: JobDir) -> str:
    """The progress file's ``failed`` event, else the last line the training wrote on stderr."""
    with contextlib.suppress(OSError, IndexError, json.JSONDecodeError, UnicodeDecodeError):
        text = read_confined(job.work, JobDir.PROGRESS, max_bytes=1 << 20, tail=True).decode()
        event = json.loads(text.strip().splitlines()[-1])
        if isinstance(event, dict) and event.get("stage") == "failed":
            return str(event["error"])
    with contextlib.suppress(OSError):
        text = read_confined(job.root, job.log.name, max_bytes=1 << 20, tail=True).decode(errors="replace")
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith(WORKER_LINE)]
        if lines:
            return re.sub(r"^mlaas4hep (train|predict): error: ", "", lines[-1])
    return "no message; see the logs"
