"""servicecore.safetar on both services' uploads: a gzip that expands beyond ``MAX_EXPANSION`` is refused
early; real bundles pass."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from servicecore import safetar
from servicecore.errors import BadInputError
from servicecore.safetar import extract_archive

MiB = 1024 * 1024


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Reads(io.RawIOBase):
    """A stream that remembers how much was read from it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._data.read(len(buffer))
        buffer[: len(data)] = data
        self.read_bytes += len(data)
        return len(data)


def test_a_gzip_bomb_is_refused_once_it_outgrows_the_bound(tmp_path: Path) -> None:
    # 200 MiB of zeros in 1 MiB members: each member is within every limit, only the expansion gives it away.
    bomb = gzip.compress(_tar({f"m/zeros{i}": bytes(MiB) for i in range(200)}), compresslevel=6)
    source = Reads(bomb)
    with pytest.raises(BadInputError, match="compression bomb"):
        extract_archive(source, tmp_path / "out", 512 * MiB, 1000)
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written <= safetar.EXPANSION_SLACK_BYTES + safetar.MAX_EXPANSION * source.read_bytes
    assert written < 64 * MiB  # far below the 200 MiB it would have written


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_ordinary_archives_unpack_as_before(tmp_path: Path, compress: bool) -> None:
    rng_bytes = bytes(range(256)) * 4096  # 1 MiB that compresses only a little
    members = {"m/saved_model.pb": rng_bytes, "m/params.json": b"{}", "m/variables/zeros": bytes(4 * MiB)}
    data = _tar(members)
    if compress:
        data = gzip.compress(data)
    written = extract_archive(io.BytesIO(data), tmp_path / "out", 512 * MiB, 1000)
    assert {str(p.relative_to(tmp_path / "out")) for p in written} == set(members)
    for name, content in members.items():
        assert (tmp_path / "out" / name).read_bytes() == content


def test_a_corrupt_gzip_is_bad_input(tmp_path: Path) -> None:
    data = gzip.compress(_tar({"m/a": b"x" * 1000}))
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        extract_archive(io.BytesIO(data[:-30]), tmp_path / "out", MiB, 10)


def test_without_an_expansion_bound_only_the_byte_limit_stops_a_bomb(tmp_path: Path) -> None:
    bomb = gzip.compress(_tar({f"m/zeros{i}": bytes(MiB) for i in range(40)}), compresslevel=6)
    with pytest.raises(BadInputError, match="unpacks to more than"):
        extract_archive(io.BytesIO(bomb), tmp_path / "out", 32 * MiB, 1000, max_expansion=None)
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written >= 31 * MiB  # it ran on to the byte limit, past where the expansion bound stops
