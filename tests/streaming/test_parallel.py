"""Reading on several threads gives exactly the serial stream: same events, same order, same errors."""

import os
import threading

import awkward as ak
import numpy as np
import pytest

from appliance.data import streaming
from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import EventStream
from appliance.data.workflow import load_workflow
from servicecore.errors import BadInputError
from tests.streaming.conftest import write_tree, write_workflow


@pytest.fixture
def small_reads(monkeypatch):
    """Blocks of 600 events, reads of 4 blocks: the small sample files take many rounds and reads."""
    monkeypatch.setattr(streaming, "MIN_READ_EVENTS", 600)
    monkeypatch.setattr(streaming, "READ_EVENTS", 2400)


def load(paths):
    wf = load_workflow(paths["files"], paths["labels"], paths["params"], paths["preproc"], paths["specs"])
    return wf, load_or_compute_specs(wf)


def stream_arrays(wf, spec, threads, epoch=0):
    chunks = list(EventStream(wf, spec, threads=threads).chunks(epoch))
    arrays = [c.x for c in chunks], [c.y for c in chunks], [c.split for c in chunks]
    if chunks and chunks[0].w is not None:
        arrays += ([c.w for c in chunks],)
    return arrays


def assert_same_chunks(expected, got):
    for want, have in zip(expected, got, strict=True):
        assert [len(a) for a in have] == [len(a) for a in want]  # chunk by chunk, not only the whole
        for a, b in zip(want, have, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("params", "preproc"),
    [
        ({"chunk_size": 250}, None),  # shuffled, three files of different sizes
        ({"chunk_size": 1500, "shuffle": False, "nevts": 7001}, None),  # unshuffled, a share of every file
        (
            {"chunk_size": 300, "mask": True, "jagged_length": "p90"},
            {
                "new_branch": {"logMET": {"def": "log(MET_pt + 1)", "type": "flat"}},
                "flat_cut": {"nJet": {"cut": "nJet >= 2", "remove": False}},
                "jagged_cut": {"Jet_pt": {"cut": ["Jet_pt > 10", "any"], "remove": False}},
            },
        ),  # cuts: parts of unequal sizes
        (
            {
                "chunk_size": 400,
                "weight": "MET_pt",
                "negative_weights": "abs",
                "file_weight": [1.0, 2.0, 0.5],
            },
            None,
        ),
        ({"chunk_size": 400, "target": ["MET_sumEt", "MET_significance"]}, None),  # a regression's targets
    ],
)
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_parallel_reading_gives_exactly_the_serial_chunks(
    threads, params, preproc, sample_files, tmp_path, small_reads
):
    files = [sample_files["signal"], sample_files["background"], sample_files["background_twin"]]
    paths = write_workflow(
        tmp_path / "wf", files, labels="1\n0\n0\n", params={"exclude_branches": [], **params}, preproc=preproc
    )
    wf, spec = load(paths)
    serial = stream_arrays(wf, spec, threads=1)
    assert sum(len(y) for y in serial[1]) == spec.dataset["events"]
    assert len(serial[1]) >= 5  # several blocks, and files read several times
    assert (len(serial) == 4) == ("weight" in params)  # the weights are compared too
    assert (serial[1][0].ndim == 2) == ("target" in params)
    assert_same_chunks(serial, stream_arrays(wf, spec, threads=threads))
    # another epoch shuffles differently, still identically on both paths
    serial_1 = stream_arrays(wf, spec, threads=1, epoch=1)
    assert_same_chunks(serial_1, stream_arrays(wf, spec, threads=threads, epoch=1))
    if wf.params.shuffle:
        assert not np.array_equal(serial_1[0][0], serial[0][0])


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("cut", [False, True])
def test_reading_several_steps_at_a_time_gives_the_step_by_step_chunks(
    cut, threads, sample_files, tmp_path, monkeypatch
):
    # uproot is asked for several blocks' steps at once and the result is cut at the step boundaries (with a
    # cut, by entry number): the chunks must be those of reading one step at a time
    files = [sample_files["signal"], sample_files["background"]]
    preproc = {"flat_cut": {"MET_pt": {"cut": "MET_pt > 40", "remove": False}}} if cut else None
    paths = write_workflow(
        tmp_path / "wf", files, params={"exclude_branches": [], "chunk_size": 200}, preproc=preproc
    )
    wf, spec = load(paths)
    monkeypatch.setattr(streaming, "MIN_READ_EVENTS", 400)
    monkeypatch.setattr(streaming, "READ_EVENTS", 1)  # one step a read
    step_by_step = stream_arrays(wf, spec, threads=1)
    for read_events in (1200, 2800, 10**6):  # 3 or 7 steps a read, or whole files
        monkeypatch.setattr(streaming, "READ_EVENTS", read_events)
        assert_same_chunks(step_by_step, stream_arrays(wf, spec, threads=threads))
    if cut:
        assert sum(len(y) for y in step_by_step[1]) < 8000


def test_one_file_with_a_label_branch_on_several_threads(tmp_path, small_reads):
    # one lane: the parallelism is reading a step while the previous one is converted
    rng = np.random.default_rng(3)
    n = 9000
    counts = rng.integers(0, 5, n)
    path = write_tree(
        tmp_path / "one.root",
        x=rng.normal(size=n),
        j=ak.unflatten(rng.normal(size=int(counts.sum())), counts),
        target=rng.integers(0, 3, n).astype(np.int32),
    )
    params = {"exclude_branches": ["nj"], "chunk_size": 400}
    wf, spec = load(write_workflow(tmp_path / "wf", [path], labels="target\n", params=params))
    assert spec.dataset["class_counts"] and len(spec.dataset["class_counts"]) == 3
    assert_same_chunks(stream_arrays(wf, spec, threads=1), stream_arrays(wf, spec, threads=4))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_block_shuffle_is_the_gather_of_the_concatenated_parts(weighted):
    rng = np.random.default_rng(7)
    parts = [
        streaming.Chunk(
            rng.random((n, 5), dtype=np.float32),
            rng.random((n, 2), dtype=np.float32),  # a regression's targets: 2-D
            rng.integers(0, 3, n).astype(np.uint8),
            rng.random(n, dtype=np.float32) if weighted else None,
        )
        for n in (40, 0, 17, 23)
    ]
    block = streaming._assemble(parts, np.random.default_rng([1, 2]))
    whole = streaming.Chunk.concatenate(parts)
    expected = whole.take(np.random.default_rng([1, 2]).permutation(len(whole)))
    for name in ("x", "y", "split", "w"):
        np.testing.assert_array_equal(getattr(block, name), getattr(expected, name))
    assert (block.w is None) == (not weighted)
    np.testing.assert_array_equal(streaming._assemble(parts, None).x, whole.x)


def test_a_damaged_file_is_reported_by_the_parallel_path_as_by_the_serial_one(sample_files, tmp_path):
    good = tmp_path / "data" / "background.root"
    good.parent.mkdir()
    good.write_bytes(sample_files["background"].read_bytes())
    paths = write_workflow(tmp_path / "wf", [sample_files["signal"], good], params={"exclude_branches": []})
    wf, spec = load(paths)
    data = bytearray(good.read_bytes())
    data[len(data) // 3 : len(data) * 2 // 3] = bytes(len(data) // 3)  # zeroes over baskets, not the header
    good.write_bytes(bytes(data))
    for threads in (1, 2):
        with pytest.raises(BadInputError, match=r"background\.root' is damaged"):
            stream_arrays(wf, spec, threads=threads)
    assert not _lane_threads()


def test_a_consumer_that_stops_early_stops_the_reading_threads(sample_files, tmp_path):
    paths = write_workflow(
        tmp_path / "wf",
        [sample_files["signal"], sample_files["background"]],
        params={"exclude_branches": [], "chunk_size": 100},
    )
    wf, spec = load(paths)
    chunks = EventStream(wf, spec, threads=2).chunks(0)
    first = next(chunks)
    assert len(first) == 100
    assert _lane_threads()  # reading ahead on its pool
    chunks.close()
    for thread in [t for t in threading.enumerate() if t.name == "event-stream"]:
        thread.join(timeout=30)
    assert not _lane_threads()


def test_read_threads_setting(sample_files, tmp_path):
    files = [sample_files["signal"], sample_files["background"]]
    wf, spec = load(write_workflow(tmp_path / "default", files))
    assert EventStream(wf, spec).threads == len(os.sched_getaffinity(0))
    wf, spec = load(write_workflow(tmp_path / "one", files, params={"read_threads": 1}))
    assert EventStream(wf, spec).threads == 1
    assert EventStream(wf, spec, threads=3).threads == 3  # the caller's choice wins over params.json
    for bad in (-1, 1.5, "2", 1000):
        paths = write_workflow(tmp_path / "bad", files, params={"read_threads": bad})
        with pytest.raises(BadInputError, match=r"read_threads"):
            load(paths)


def test_read_command_uses_the_setting(sample_files, tmp_path):
    from appliance.data.streaming import read_workflow

    files = [sample_files["signal"], sample_files["background"]]
    results = []
    for threads in (1, 2):
        paths = write_workflow(tmp_path / f"t{threads}", files, params={"read_threads": threads})
        results.append(read_workflow(paths["files"], paths["labels"], paths["params"], specs=paths["specs"]))
    assert results[0]["events"] == results[1]["events"] == 8000
    assert results[0]["classes"] == results[1]["classes"]
    assert results[1]["threads"] == 2 and results[0]["threads"] == 1


def _lane_threads():
    return [t for t in threading.enumerate() if t.name.startswith("read-lane") and t.is_alive()]
