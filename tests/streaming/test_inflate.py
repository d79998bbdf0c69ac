"""uproot inflates ZLIB baskets with ISA-L (appliance.data.sources): the chunks of zlib, writing untouched."""

import numpy as np
import pytest
import uproot

from appliance.data import sources
from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import EventStream
from appliance.data.workflow import load_workflow
from servicecore.errors import BadInputError
from tests.streaming.conftest import write_tree, write_workflow


def decompressor():
    return uproot.compression._decompress_ZLIB


def test_baskets_are_inflated_by_isal_and_files_written_with_zlib():
    assert decompressor().library == "isal"
    # writing (friend trees, synthetic files) keeps the standard zlib and its compression levels
    assert uproot.ZLIB(1).library == "zlib"
    assert uproot.compression.ZLIB.library == "zlib"


def test_isal_and_zlib_give_the_same_chunks(sample_files, tmp_path, monkeypatch):
    files = [sample_files["signal"], sample_files["background"]]
    paths = write_workflow(tmp_path / "wf", files, params={"exclude_branches": [], "chunk_size": 300})
    wf = load_workflow(paths["files"], paths["labels"], paths["params"], paths["preproc"], paths["specs"])
    spec = load_or_compute_specs(wf)
    calls = []
    inflate = type(decompressor()).decompress

    def counted(self, data, uncompressed_bytes=None):
        calls.append(self.library)
        return inflate(self, data, uncompressed_bytes)

    monkeypatch.setattr(type(decompressor()), "decompress", counted)
    by_library = {}
    for library in ("zlib", "isal"):
        monkeypatch.setattr(decompressor(), "library", library)
        calls.clear()
        chunks = list(EventStream(wf, spec, threads=2).chunks(0))
        assert calls and set(calls) == {library}  # the baskets really went through that library
        by_library[library] = chunks
    assert len(by_library["isal"]) == len(by_library["zlib"]) >= 5
    for a, b in zip(by_library["zlib"], by_library["isal"], strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.split, b.split)


def test_a_basket_isal_cannot_inflate_is_reported_as_damage(tmp_path):
    rng = np.random.default_rng(5)
    path = write_tree(tmp_path / "one.root", x=np.round(rng.normal(size=20_000), 2))
    branch = uproot.open(path)["Events"]["x"]
    seek = int(branch.member("fBasketSeek")[0])
    data = bytearray(path.read_bytes())
    key_length = int.from_bytes(data[seek + 14 : seek + 16], "big")  # TKey's fKeylen
    payload = seek + key_length + 9 + 2  # past ROOT's 9-byte block header and zlib's 2-byte header
    assert data[seek + key_length : seek + key_length + 2] == b"ZL"
    data[payload : payload + 64] = bytes([0xFF]) * 64  # an invalid deflate block
    path.write_bytes(bytes(data))
    tree = sources.open_tree(str(path), "Events")
    with pytest.raises(BadInputError, match=r"one\.root' is damaged"):
        list(sources.iterate(tree, ["x"], 5000, 0, 20_000, str(path)))
