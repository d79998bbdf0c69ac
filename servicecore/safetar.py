"""Safe extraction of tar archives sent by users (TFaaS ``/upload``, the MLaaS4HEP server's ``/upload``).

The original TFaaS extracted member paths unsanitised. Every member is checked before anything is written:
only regular files and directories with relative paths that stay inside the destination are accepted, and the
number of members and their unpacked size are bounded. The archive is read as a stream, so a compression bomb
is stopped once it passes the size limit instead of being inflated first.

Files are written here, not by ``TarFile.extract``: that is one code path on every supported Python.
Debian 12's own Python (3.11.2) has no extraction filters (they came in 3.11.4), and ``extract`` without
them, run as root, would give files the archive's owners and modes. Written here, a file belongs to whoever
extracts it, with its mode cut to ``(mode & 0o755) | 0o600`` (what the stdlib ``data`` filter keeps). Where
:func:`tarfile.data_filter` exists it also checks every member, as a second line of defence.

Extract into a fresh temporary directory: if :class:`~servicecore.errors.BadInputError` is raised, that
directory holds a partial extraction and the caller throws it away.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from servicecore.errors import BadInputError

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 512 * MiB
DEFAULT_MAX_MEMBERS = 10_000
COPY_CHUNK = 1 << 20
# A gzipped archive may unpack to at most this many times the compressed bytes read so far, beyond its first
# EXPANSION_SLACK_BYTES. A bomb (a gzip of zeros expands 1000-fold) is then refused after about 18 MiB
# written, in a fraction of a second, instead of at max_bytes (seconds of disk writes, which
# bench/bad_input.py measured at 5 s in TFaaS and 23 s in the API). A SavedModel's weights and ROOT files
# compress 1-3-fold; an archive that compresses better than 100-fold can be sent as a plain tar, which this
# bound does not touch.
MAX_EXPANSION = 100
EXPANSION_SLACK_BYTES = 16 * MiB
GZIP_MAGIC = b"\x1f\x8b"


def extract_archive(
    source: BinaryIO | bytes | str | Path,
    dest_dir: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_expansion: int | None = MAX_EXPANSION,
) -> list[Path]:
    """Extract a (plain, gzip, bzip2 or xz) tar archive into ``dest_dir`` and return the files written.

    Raises :class:`BadInputError` naming the member for: absolute paths, ``..`` components, symbolic or hard
    links, devices and FIFOs, more than ``max_members`` members, more than ``max_bytes`` unpacked bytes, or a
    gzip stream that expands more than ``max_expansion``-fold (``None``: no such bound).
    """
    dest = Path(dest_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total_bytes = 0
    try:
        # "r|*": a forward-only stream, so members are checked one by one as they are decompressed.
        with (
            _as_stream(source) as raw,
            tarfile.open(fileobj=_guarded(raw, max_expansion), mode="r|*") as archive,
        ):
            for count, member in enumerate(archive, start=1):
                if count > max_members:
                    raise BadInputError(f"archive has more than {max_members} members")
                check_member(member)
                total_bytes += member.size
                if total_bytes > max_bytes:
                    raise BadInputError(
                        f"archive unpacks to more than {max_bytes} bytes (at member {member.name!r})"
                    )
                _stdlib_check(member, dest)
                target = _write_member(archive, member, dest)
                if target is not None:
                    written.append(target)
    except tarfile.TarError as err:
        raise BadInputError(f"not a valid tar archive: {err}") from None
    except (EOFError, OSError) as err:  # truncated gzip streams surface as EOFError or zlib's OSError
        raise BadInputError(f"archive is truncated or corrupt: {err}") from None
    if not written:
        raise BadInputError("archive holds no files")
    return written


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse anything but a regular file or a directory whose relative path stays inside the destination."""
    name = member.name
    if member.issym() or member.islnk():
        raise BadInputError(f"archive member {name!r} is a link, which is not allowed")
    if not (member.isfile() or member.isdir()):
        raise BadInputError(f"archive member {name!r} is a device, FIFO or other special file")
    _relative(name)


def _stdlib_check(member: tarfile.TarInfo, dest: Path) -> None:
    """The stdlib's ``data`` filter as a second opinion, on the Pythons that have it (3.11.4 and newer)."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(member, str(dest))
    except tarfile.FilterError as err:
        raise BadInputError(f"archive member {member.name!r} is not allowed: {err}") from None


def _write_member(archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> Path | None:
    """Write one checked member under ``dest``; return the file's path (``None`` for a directory)."""
    target = dest / _relative(member.name)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    content = archive.extractfile(member)
    if content is None:  # cannot happen for a regular file; refuse rather than write an empty one
        raise BadInputError(f"archive member {member.name!r} has no content")
    target.unlink(missing_ok=True)  # a repeated member replaces the earlier one, as tar does
    with target.open("xb") as out:
        shutil.copyfileobj(content, out, COPY_CHUNK)
    target.chmod((member.mode & 0o755) | 0o600)
    return target


def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or "\\" in name or name.startswith("~"):
        raise BadInputError(f"archive member {name!r} has an absolute or platform-specific path")
    if any(part == ".." for part in path.parts):
        raise BadInputError(f"archive member {name!r} climbs out of the archive with '..'")
    return path


def _as_stream(source: BinaryIO | bytes | str | Path) -> contextlib.AbstractContextManager[BinaryIO]:
    """A context that yields a readable stream; it closes only the files it opened itself."""
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    if isinstance(source, str | Path):
        try:
            return Path(source).open("rb")
        except OSError as err:
            raise BadInputError(f"cannot read archive {str(source)!r}: {err.strerror}") from None
    return contextlib.nullcontext(source)


def _guarded(stream: BinaryIO, max_expansion: int | None) -> BinaryIO:
    """``stream`` as the archive reader should read it: a gzip stream decompressed here, refused once it
    expands beyond ``max_expansion`` (see above); any other stream, or any stream with no bound, as it is."""
    if max_expansion is None:
        return stream
    counted = _Counting(stream)
    buffered = io.BufferedReader(counted)
    if buffered.peek(2)[:2] != GZIP_MAGIC:
        return buffered
    return io.BufferedReader(_BoundedGunzip(buffered, counted, max_expansion))


class _Counting(io.RawIOBase):
    """The bytes read from a stream, counted."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


class _BoundedGunzip(io.RawIOBase):
    """Decompressed gzip, refused (BadInputError) once it outgrows the compressed bytes read."""

    def __init__(self, compressed: io.BufferedReader, counted: _Counting, max_expansion: int) -> None:
        self._gunzip = gzip.GzipFile(fileobj=compressed, mode="rb")
        self._counted = counted
        self._max_expansion = max_expansion
        self._unpacked = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._gunzip.read(len(buffer))
        self._unpacked += len(data)
        if self._unpacked > EXPANSION_SLACK_BYTES + self._max_expansion * self._counted.count:
            raise BadInputError(
                f"the archive expands more than {self._max_expansion}-fold ({self._unpacked} bytes from "
                f"{self._counted.count} compressed): refused as a compression bomb; send a plain tar"
            )
        buffer[: len(data)] = data
        return len(data)
