"""Safe extraction of user archives: good archives unpack, every unsafe member is refused by name.

Every test runs twice: with the stdlib's extraction filters, and without them, as on Debian 12's own
Python 3.11.2 (they came in 3.11.4), where the appliance actually runs.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from servicecore.errors import BadInputError
from servicecore.safetar import extract_archive


@pytest.fixture(autouse=True, params=["stdlib-filters", "no-stdlib-filters"])
def stdlib_filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    present = hasattr(tarfile, "data_filter")
    if request.param == "no-stdlib-filters":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        monkeypatch.delattr(tarfile, "FilterError", raising=False)
        return False
    if not present:
        pytest.skip("this Python's tarfile has no extraction filters (3.11.4 and newer have them)")
    return True


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}" if compression else "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.mark.parametrize("compression", ["", "gz", "xz"])
def test_good_archive_unpacks_with_contents(tmp_path: Path, compression: str) -> None:
    data = make_tar(
        [
            special("model", tarfile.DIRTYPE),
            regular("model/params.json", b'{"name": "model"}'),
            regular("model/variables/variables.index", b"\x00\x01"),
        ],
        compression,
    )
    written = extract_archive(data, tmp_path / "out", max_bytes=1000, max_members=10)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "model/params.json",
        "model/variables/variables.index",
    ]
    assert (tmp_path / "out/model/params.json").read_bytes() == b'{"name": "model"}'


def test_reads_from_a_path_and_a_file_object(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar([regular("m/x.txt", b"hello")], "gz"))
    assert extract_archive(archive, tmp_path / "one")[0].read_bytes() == b"hello"
    with archive.open("rb") as stream:
        assert extract_archive(stream, tmp_path / "two")[0].read_bytes() == b"hello"


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    info, data = regular("m/run.sh", b"#!/bin/sh\n")
    info.mode = 0o4777
    extract_archive(make_tar([(info, data)]), tmp_path)
    mode = (tmp_path / "m/run.sh").stat().st_mode
    assert not mode & 0o4000 and not mode & 0o002
    assert mode & 0o100, "the owner's execute bit is kept"


def test_files_belong_to_whoever_extracts(tmp_path: Path) -> None:
    """As root, tarfile would give files the archive's owner; the appliance's services must own them."""
    info, data = regular("m/params.json", b"{}")
    info.uid, info.gid, info.uname, info.gname = 4242, 4343, "mallory", "mallory"
    extract_archive(make_tar([(info, data)]), tmp_path)
    st = (tmp_path / "m/params.json").stat()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_a_repeated_member_replaces_the_earlier_one(tmp_path: Path) -> None:
    extract_archive(make_tar([regular("m/a.txt", b"first"), regular("m/a.txt", b"second")]), tmp_path)
    assert (tmp_path / "m/a.txt").read_bytes() == b"second"


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (regular("../evil.txt", b"x"), "'..'"),
        (regular("m/../../evil.txt", b"x"), "'..'"),
        (regular("/tmp/evil.txt", b"x"), "absolute"),
        (special("m/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (special("m/relative-link", tarfile.SYMTYPE, "params.json"), "link"),
        (special("m/hard", tarfile.LNKTYPE, "m/params.json"), "link"),
        (special("m/tty", tarfile.CHRTYPE), "device"),
        (special("m/disk", tarfile.BLKTYPE), "device"),
        (special("m/fifo", tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "rel-symlink", "hardlink", "chr", "blk", "fifo"],
)
def test_unsafe_members_are_refused_and_nothing_escapes(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    dest = tmp_path / "jail" / "dest"
    data = make_tar([regular("m/params.json", b"{}"), member])
    with pytest.raises(BadInputError, match=message) as caught:
        extract_archive(data, dest)
    assert member[0].name in str(caught.value)
    outside = {p for p in tmp_path.rglob("*") if not p.is_relative_to(dest)}
    assert outside == {tmp_path / "jail"}
    assert not Path("/tmp/evil.txt").exists()


def test_too_many_members(tmp_path: Path) -> None:
    data = make_tar([regular(f"m/{i}.txt", b"x") for i in range(6)])
    with pytest.raises(BadInputError, match="more than 5 members"):
        extract_archive(data, tmp_path, max_members=5)
    extract_archive(data, tmp_path / "ok", max_members=6)


def test_unpacked_size_limit(tmp_path: Path) -> None:
    data = make_tar([regular("m/a.bin", b"x" * 600), regular("m/b.bin", b"y" * 600)], "gz")
    with pytest.raises(BadInputError, match=r"more than 1000 bytes.*m/b\.bin"):
        extract_archive(data, tmp_path, max_bytes=1000)
    assert not (tmp_path / "m/b.bin").exists()


def test_compression_bomb_is_stopped_without_inflating_it(tmp_path: Path) -> None:
    """A 1 GiB member compresses to about a megabyte: the limit trips on its header, before inflating."""
    header = tarfile.TarInfo("m/zeros.bin")
    header.size = 1 << 30
    stream = io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=1) as gz:
        gz.write(header.tobuf())
        block = bytes(1 << 20)
        for _ in range(1024):
            gz.write(block)
    compressed = stream.getvalue()
    assert len(compressed) < 8 << 20
    start = time.monotonic()
    with pytest.raises(BadInputError, match="more than"):
        extract_archive(compressed, tmp_path, max_bytes=10 << 20)
    assert time.monotonic() - start < 2.0
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a tar archive at all" * 40, "not a valid tar"),
        (b"", "not a valid tar|no files"),
    ],
)
def test_garbage_is_refused(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        extract_archive(data, tmp_path)


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    data = make_tar([regular("m/a.bin", bytes(range(256)) * 400)], "gz")
    with pytest.raises(BadInputError, match=r"truncated|corrupt|not a valid"):
        extract_archive(data[: len(data) // 2], tmp_path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read archive"):
        extract_archive(tmp_path / "absent.tar", tmp_path / "out")
