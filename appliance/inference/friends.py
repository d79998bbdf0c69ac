"""Friend trees: their names, their contents, and where they go (a directory, or a ``root://`` directory).

One friend tree per input file, a TTree named ``scores`` in ``<input stem>_scores.root``, with one entry per
input entry in the same order: ``entry`` (the input's entry number, to check the alignment), ``passed``
(false where the model's cuts remove the event) and one float32 ``score_<label>`` branch per model output
(NaN where ``passed`` is false). A TTree even for RNTuple inputs: ROOT's ``AddFriend``, RDataFrame and uproot
read it beside either.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import uproot

from servicecore.errors import BadInputError

FRIEND_TREE = "scores"
SUFFIX = "_scores.root"
XROOTD_SCHEMES = ("root://", "roots://", "xroot://", "xroots://")


def friend_names(urls: Sequence[str]) -> list[str]:
    """``<stem>_scores.root`` per input; inputs that share a stem get their position in the list added."""
    stems = [
        re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(url.split("?")[0]).stem) or "input" for url in urls
    ]
    return [
        f"{stem}_{i}{SUFFIX}" if stems.count(stem) > 1 else f"{stem}{SUFFIX}" for i, stem in enumerate(stems)
    ]


def write_friend(
    path: Path, entries: int, score_names: Sequence[str], ranges: Iterable[Any]
) -> dict[str, int]:
    """Write the friend tree of one input from its scored ranges, which come in entry order.

    Refuses (and the caller discards the file) when the ranges do not cover exactly ``entries`` entries.
    """
    branch_types = {"entry": np.int64, "passed": np.bool_, **{name: np.float32 for name in score_names}}
    written = passed = 0
    with uproot.recreate(path) as out:
        tree = out.mktree(FRIEND_TREE, branch_types, title="model scores, entry by entry with the input")
        for scored in ranges:
            n = len(scored.passed)
            if scored.start != written:
                raise RuntimeError(f"{path.name}: range starts at entry {scored.start}, expected {written}")
            if n == 0:
                continue
            arrays = {"entry": np.arange(written, written + n, dtype=np.int64), "passed": scored.passed}
            arrays |= {name: scored.scores[:, j] for j, name in enumerate(score_names)}
            tree.extend(arrays)
            written += n
            passed += int(np.count_nonzero(scored.passed))
    if written != entries:
        raise BadInputError(f"{path.name}: read {written} entries of {entries}; the input changed while read")
    return {"entries": written, "passed": passed}


@dataclass
class Destination:
    """Where the friend trees go: a local directory, or a directory URL on an XRootD server."""

    local: Path | None
    url: str | None

    @classmethod
    def parse(cls, output: str) -> Destination:
        if output.startswith(XROOTD_SCHEMES):
            return cls(None, output.rstrip("/"))
        path = Path(output).absolute()
        if path.exists() and not path.is_dir():
            raise BadInputError(f"output {output!r} exists and is not a directory")
        return cls(path, None)

    def refuse_existing(self, names: Sequence[str]) -> None:
        """Friend trees are never overwritten: a second run goes to another directory."""
        present = [name for name in names if self._exists(name)]
        if present:
            raise BadInputError(
                f"output {self.describe()!r} already holds {', '.join(present[:3])}; choose another --fout"
            )

    def describe(self) -> str:
        return str(self.local) if self.local is not None else str(self.url)

    def _exists(self, name: str) -> bool:
        if self.local is not None:
            return (self.local / name).exists()
        filesystem, path = _xrootd(f"{self.url}/{name}")
        status, _ = filesystem.stat(path)
        return bool(status.ok)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private directory beside the output (same file system, so renames are atomic), always removed;
        an output directory made for this run is removed too if the run fails."""
        created = self.local is not None and not self.local.exists()
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".predict-", dir=self.local))
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created and self.local is not None:
                with contextlib.suppress(OSError):
                    self.local.rmdir()  # only if empty
            raise
        shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, names: Sequence[str]) -> None:
        """Move the finished files into place; on a failure, those already moved are removed again."""
        moved: list[str] = []
        try:
            for name in names:
                if self.local is not None:
                    (staging / name).rename(self.local / name)
                else:
                    _copy_to_xrootd(staging / name, f"{self.url}/{name}")
                moved.append(name)
        except BaseException:
            for name in moved:
                self._remove(name)
            raise

    def _remove(self, name: str) -> None:
        if self.local is not None:
            with contextlib.suppress(OSError):
                (self.local / name).unlink()
            return
        filesystem, path = _xrootd(f"{self.url}/{name}")
        filesystem.rm(path)


def _xrootd(url: str) -> tuple[Any, str]:
    from XRootD import client

    parsed = client.URL(url)
    if not parsed.is_valid():
        raise BadInputError(f"not a valid XRootD URL: {url!r}")
    return client.FileSystem(f"{parsed.protocol}://{parsed.hostid}"), parsed.path


def _copy_to_xrootd(source: Path, url: str) -> None:
    """Copy under a temporary name, then rename on the server: a reader never sees half a friend tree."""
    from XRootD import client

    filesystem, path = _xrootd(url)
    temporary = f"{path}.part-{secrets.token_hex(6)}"
    target = url[: len(url) - len(path)] + temporary
    process = client.CopyProcess()
    process.add_job(str(source), target, force=False, mkdir=True)
    process.prepare()
    status, results = process.run()
    job = results[0]["status"] if results else status
    if not status.ok or not job.ok:
        filesystem.rm(temporary)
        raise BadInputError(f"copying the friend tree to {url!r} failed: {job.message.strip()}")
    status, _ = filesystem.mv(temporary, path)
    if not status.ok:
        filesystem.rm(temporary)
        raise BadInputError(f"renaming the friend tree into {url!r} failed: {status.message.strip()}")
