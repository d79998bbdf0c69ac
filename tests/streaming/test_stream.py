"""The streaming layer end to end on real ROOT files: local, through the XRootD origin and proxies."""

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import TEST, TRAIN, VALIDATION, EventStream, read_workflow
from appliance.data.workflow import load_workflow
from tests.streaming.conftest import write_tree, write_workflow


def stream_all(paths, epoch=0):
    wf = load_workflow(paths["files"], paths["labels"], paths["params"], paths["preproc"], paths["specs"])
    spec = load_or_compute_specs(wf)
    stream = EventStream(wf, spec)
    chunks = list(stream.chunks(epoch))
    return wf, spec, stream, chunks


def test_pass1_statistics_and_padding_to_the_longest_list(tiny_files, tmp_path):
    paths = write_workflow(tmp_path / "wf", tiny_files, params={"shuffle": False, "chunk_size": 100})
    _, spec, stream, chunks = stream_all(paths)
    x_stats, j_stats = spec.flat[0], spec.jagged[0]
    assert (x_stats.min, x_stats.max, x_stats.count) == (1.0, 9.0, 6)
    assert x_stats.mean == pytest.approx(4.0)
    assert (j_stats.min, j_stats.max, j_stats.max_length, j_stats.length) == (0.0, 8.0, 4, 4)
    assert j_stats.length_counts == [1, 2, 1, 1, 1]
    # identifiers (run, event) are dropped; columns are flat first, then the padded jagged branch
    assert spec.columns == ["x", "j[0]", "j[1]", "j[2]", "j[3]"]
    x = np.concatenate([c.x for c in chunks])
    y = np.concatenate([c.y for c in chunks])
    assert len(x) == 6 and stream.total_events == 6
    rows = {tuple(np.round(r, 4)) for r in x}
    assert (0.0, 0.125, 0.25, 0.375, 0.0) in rows  # x=1, j=[1,2,3], padded
    assert (0.125, 0.0, 0.0, 0.0, 0.0) in rows  # x=2, empty list
    assert (1.0, 1.0, 0.875, 0.75, 0.625) in rows  # x=9, j=[8,7,6,5]
    # labels per file: a.root is class "1", b.root class "0"
    from_a = x[:, 0] < 0.4  # x in 1..4
    assert set(y[from_a]) == {1} and set(y[~from_a]) == {0}
    assert stream.class_names == ["0", "1"]


def test_user_given_length_truncates_and_quantile_length(tiny_files, tmp_path):
    paths = write_workflow(tmp_path / "wf", tiny_files, params={"jagged_length": 1, "shuffle": False})
    _, spec, _, chunks = stream_all(paths)
    assert spec.columns == ["x", "j[0]"]
    x = np.concatenate([c.x for c in chunks])
    np.testing.assert_allclose(sorted(x[:, 1]), sorted([1 / 8, 0, 4 / 8, 5 / 8, 0, 1.0]))
    paths = write_workflow(tmp_path / "wf2", tiny_files, params={"jagged_length": "p50", "mask": True})
    _, spec, _, _ = stream_all(paths)
    assert spec.jagged[0].length == 1  # half of the six events have at most one element
    assert spec.columns[-1] == "j.mask[0]"


def test_mixing_takes_every_file_in_proportion_and_runs_to_the_end(sample_files, tmp_path):
    files = [sample_files["signal"], sample_files["background"]]  # 3000 and 5000 events
    paths = write_workflow(tmp_path / "wf", files, params={"chunk_size": 800})
    _, _, stream, chunks = stream_all(paths)
    assert sum(len(c) for c in chunks) == 8000  # nothing dropped when the smaller file ends
    for chunk in chunks:
        counts = np.bincount(chunk.y, minlength=2)
        assert abs(counts[1] - 300) < 60 and counts.sum() == 800  # 3/8 signal in every chunk, up to shuffling
    # shuffled across files: the two classes interleave inside a chunk
    first = chunks[0].y
    assert np.count_nonzero(np.diff(first)) > 100  # files one after the other would change class once
    weights = stream.class_weights()
    assert weights[1] == pytest.approx(8000 / (2 * 3000)) and weights[0] == pytest.approx(8000 / (2 * 5000))


def test_nevts_splits_over_files_and_split_is_stable(sample_files, tmp_path):
    files = [sample_files["signal"], sample_files["background"]]
    paths = write_workflow(tmp_path / "wf", files, params={"nevts": 800, "chunk_size": 200, "seed": 7})
    _, _, _, chunks0 = stream_all(paths, epoch=0)
    _, _, _, chunks1 = stream_all(paths, epoch=1)
    y0 = np.concatenate([c.y for c in chunks0])
    assert len(y0) == 800 and np.bincount(y0).tolist() == [500, 300]

    def by_split(chunks):
        rows = {}
        for c in chunks:
            for which in (TRAIN, VALIDATION, TEST):
                part, _ = c.part(which)
                rows.setdefault(which, set()).update(map(bytes, part))
        return rows

    s0, s1 = by_split(chunks0), by_split(chunks1)
    assert s0 == s1  # epochs reshuffle, but an event never changes part
    assert not (s0[TEST] & s0[TRAIN])
    fractions = np.array([len(s0[w]) for w in (TRAIN, VALIDATION, TEST)]) / 800
    np.testing.assert_allclose(fractions, [0.64, 0.16, 0.20], atol=0.05)
    assert not all(np.array_equal(a.y, b.y) for a, b in zip(chunks0, chunks1, strict=True))


def test_labels_from_a_branch(tmp_path):
    f = write_tree(tmp_path / "l.root", x=np.arange(10.0), target=np.array([0, 1, 2] * 3 + [1], np.int32))
    paths = write_workflow(
        tmp_path / "wf", [f], labels="target\n", params={"shuffle": False, "chunk_size": 4}
    )
    _, spec, stream, chunks = stream_all(paths)
    assert spec.columns == ["x"]  # the label branch is not a feature
    assert stream.class_names == ["0", "1", "2"]
    y = np.concatenate([c.y for c in chunks])
    x = np.concatenate([c.x for c in chunks])
    np.testing.assert_array_equal(y[np.argsort(x[:, 0])], [0, 1, 2] * 3 + [1])


def test_preprocessing_new_branches_and_cuts(tiny_files, tmp_path):
    preproc = {
        "new_branch": {"logx": {"def": "log(x)", "type": "flat"}},
        "flat_cut": {"x": {"cut": "1 < x <= 9", "remove": False}},
        "jagged_cut": {"j": {"cut": ["j > 0.5", "all"], "remove": False}},
    }
    paths = write_workflow(tmp_path / "wf", tiny_files, params={"shuffle": False}, preproc=preproc)
    _, spec, _, chunks = stream_all(paths)
    # x in (1, 9]: x=2,3,4,5,9; all(j > 0.5) keeps x=2 (empty: all() is true), 3, 4 and 9 but not 5 ([0])
    assert spec.dataset["events"] == 4
    assert spec.dataset["class_counts"] == [1, 3]
    assert spec.columns[:2] == ["x", "logx"]
    x = np.concatenate([c.x for c in chunks])
    logx = spec.flat[1]
    assert logx.min == pytest.approx(np.log(2)) and logx.max == pytest.approx(np.log(9))
    expected = (np.log([2, 3, 4, 9]) - np.log(2)) / (np.log(9) - np.log(2))
    np.testing.assert_allclose(sorted(x[:, 1]), expected, rtol=1e-6)


def test_jagged_any_cut_and_removed_branch(tiny_files, tmp_path):
    preproc = {"jagged_cut": {"j": {"cut": ["j >= 6", "any"], "remove": True}}}
    paths = write_workflow(tmp_path / "wf", tiny_files, preproc=preproc)
    _, spec, _, chunks = stream_all(paths)
    assert spec.columns == ["x"]  # j only served the cut
    assert (spec.flat[0].min, spec.flat[0].max) == (4.0, 9.0)  # statistics of the selected events only
    assert sorted(np.concatenate([c.x for c in chunks])[:, 0]) == [0.0, 1.0]


def test_specs_are_reused_for_the_same_inputs_and_recomputed_for_others(tiny_files, tmp_path):
    paths = write_workflow(tmp_path / "wf", tiny_files)
    stream_all(paths)
    saved = json.loads((tmp_path / "wf" / "specs.json").read_text())
    # a reused file is not rewritten: mark it and see the mark come back
    saved["features"]["dataset"]["marker"] = "reused"
    (tmp_path / "wf" / "specs.json").write_text(json.dumps(saved))
    _, spec, _, _ = stream_all(paths)
    assert spec.dataset.get("marker") == "reused"
    # other branches: the stale file is not reused
    (tmp_path / "wf" / "params.json").write_text(
        json.dumps({"chunk_size": 2, "exclude_branches": ["j", "nj"]})
    )
    _, spec, _, _ = stream_all(paths)
    assert "marker" not in spec.dataset and spec.columns == ["x"]
    # another file set: not reused either
    write_workflow(tmp_path / "wf", tiny_files[:1] * 2)
    _, spec, _, _ = stream_all(paths)
    assert spec.dataset["events"] == 8
    assert json.loads((tmp_path / "wf" / "specs.json").read_text())["features"]["dataset"]["events"] == 8


@pytest.mark.parametrize("route", ["origin", "proxy", "forwarding"])
def test_reading_through_xrootd_gives_the_same_matrix_as_local(route, xrootd, sample_files, tmp_path):
    name = xrootd.add_file(sample_files["signal"], f"stream/{route}/signal.root")
    xrootd.add_file(sample_files["background"], f"stream/{route}/background.root")
    url = {"origin": xrootd.origin_url, "proxy": xrootd.proxy_url, "forwarding": xrootd.forwarding_url}[route]
    remote = [url(name), url(name.replace("signal", "background"))]
    local = [sample_files["signal"], sample_files["background"]]
    params = {"chunk_size": 1000, "nevts": 2000}
    _, spec_l, _, chunks_l = stream_all(write_workflow(tmp_path / "local", local, params=params))
    _, spec_r, _, chunks_r = stream_all(write_workflow(tmp_path / "remote", remote, params=params))
    assert spec_r.columns == spec_l.columns
    np.testing.assert_array_equal(
        np.concatenate([c.x for c in chunks_r]), np.concatenate([c.x for c in chunks_l])
    )


def test_redirector_is_prefixed_to_paths_that_do_not_exist_locally(xrootd, sample_files, tmp_path):
    name = xrootd.add_file(sample_files["signal"], "store/mc/signal.root")
    xrootd.add_file(sample_files["background"], "store/mc/background.root")
    redirector = f"root://127.0.0.1:{xrootd.proxy_port}"
    paths = write_workflow(
        tmp_path / "wf",
        ["/" + name, "/store/mc/background.root"],
        params={"redirector": redirector, "nevts": 500},
    )
    wf, _, _, chunks = stream_all(paths)
    assert wf.files[0] == f"{redirector}//{name}"
    assert sum(len(c) for c in chunks) == 500


def test_tree_in_a_directory_and_the_real_nanoaod_schema(nanoaod_sample, tmp_path):
    with uproot.open(nanoaod_sample) as f:
        events = f["Events"].arrays(["run", "event", "MET_pt", "Jet_pt", "nJet"], library="ak")
    nested = tmp_path / "nested.root"
    with uproot.recreate(nested) as f:
        f.mktree("dir/Events", {"MET_pt": events.MET_pt.type, "Jet": ak.zip({"pt": events.Jet_pt}).type})
        f["dir/Events"].extend({"MET_pt": events.MET_pt, "Jet": ak.zip({"pt": events.Jet_pt})})
    paths = write_workflow(tmp_path / "wf", [nested, nanoaod_sample], params={"branch": "dir/Events"})
    with pytest.raises(Exception, match="tree 'dir/Events' not found"):
        stream_all(paths)
    paths = write_workflow(
        tmp_path / "wf2", [nested, nested], params={"branch": "dir/Events", "chunk_size": 50}
    )
    _, spec, _, chunks = stream_all(paths)
    assert spec.columns[:2] == ["MET_pt", "nJet"]
    assert spec.jagged[0].max_length == int(ak.max(ak.num(events.Jet_pt)))
    # the real NanoAOD file: 947 branches, identifiers dropped, strings and such skipped
    paths = write_workflow(
        tmp_path / "wf3",
        [nanoaod_sample, nanoaod_sample],
        params={"selected_branches": "MET_*,Jet_pt,Muon_*,run"},
    )
    _, spec, stream, chunks = stream_all(paths)
    assert "run" not in spec.columns and "MET_pt" in spec.columns and "Jet_pt[0]" in spec.columns
    assert sum(len(c) for c in chunks) == 400 and stream.dim == spec.dim
    assert all(np.isfinite(c.x).all() for c in chunks)


def test_read_command_reports_rates(sample_files, tmp_path):
    paths = write_workflow(tmp_path / "wf", [sample_files["signal"], sample_files["background"]])
    result = read_workflow(paths["files"], paths["labels"], paths["params"], None, paths["specs"])
    assert result["events"] == 8000 and result["features"] > 0
    assert result["events_per_s"] > 0 and result["mb_per_s"] > 0 and result["seconds"] > 0
    assert result["classes"] == {"0": 5000, "1": 3000}
