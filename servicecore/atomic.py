"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every file the services write for others to read (specs, job state, high-water marks, downloads, plots) goes
through here: written to a temporary file in the same directory, flushed, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", permissions: int | None = 0o644) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an error it is gone.

    ``permissions`` is applied before the rename (``mkstemp`` creates 0600); ``None`` keeps 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(tmp)
    try:
        with os.fdopen(fd, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if permissions is not None:
            temporary.chmod(permissions)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes, permissions: int | None = 0o644) -> None:
    with atomic_file(path, "wb", permissions) as out:
        out.write(data)


def write_text(path: Path, text: str, permissions: int | None = 0o644) -> None:
    with atomic_file(path, "w", permissions) as out:
        out.write(text)


def write_json(
    path: Path, data: Any, permissions: int | None = 0o644, default: Callable[[Any], Any] | None = None
) -> None:
    """JSON, indented and with sorted keys, so that files diff well and hash the same for the same data."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True, default=default) + "\n", permissions)
