"""RNTuple input: every reading path gives for an RNTuple what it gives for the same data in a TTree."""

import awkward as ak
import numpy as np
import pytest
import uproot

from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import EventStream, read_workflow
from appliance.data.workflow import load_workflow
from servicecore.errors import BadInputError
from tests.streaming.conftest import write_workflow
from tests.support.rntuple import to_rntuple

PREPROC = {
    "new_branch": {"ht": {"def": "MET_pt + MET_sumEt", "type": "flat"}},
    "flat_cut": {"MET_pt": {"cut": "MET_pt > 5"}},
}


@pytest.fixture(scope="module")
def rntuple_files(sample_files, tmp_path_factory):
    base = tmp_path_factory.mktemp("rntuple")
    return {name: to_rntuple(path, base / f"{name}.root") for name, path in sample_files.items()}


def stream(paths):
    wf = load_workflow(paths["files"], paths["labels"], paths["params"], paths["preproc"], paths["specs"])
    spec = load_or_compute_specs(wf)
    chunks = list(EventStream(wf, spec).chunks(0))
    return spec, np.concatenate([c.x for c in chunks]), np.concatenate([c.y for c in chunks])


def test_the_files_really_hold_rntuples(rntuple_files):
    with uproot.open(rntuple_files["signal"]) as handle:
        assert handle.classnames()["Events;1"] == "ROOT::RNTuple"


@pytest.mark.parametrize("preproc", [None, PREPROC], ids=["plain", "new-branch-and-cut"])
def test_specs_and_stream_of_an_rntuple_equal_those_of_the_ttree(
    preproc, sample_files, rntuple_files, tmp_path
):
    names = ["signal", "background"]
    params = {"chunk_size": 700, "exclude_branches": []}
    tree = stream(
        write_workflow(tmp_path / "t", [sample_files[n] for n in names], params=params, preproc=preproc)
    )
    ntuple = stream(
        write_workflow(tmp_path / "r", [rntuple_files[n] for n in names], params=params, preproc=preproc)
    )
    # Columns follow the file's order, and uproot writes an RNTuple's fields sorted by name.
    assert sorted(ntuple[0].columns) == sorted(tree[0].columns) and len(tree[0].jagged) > 0
    order = [ntuple[0].columns.index(c) for c in tree[0].columns]
    maxima = {b.name: b.max for b in ntuple[0].branches}
    assert [maxima[b.name] for b in tree[0].branches] == [b.max for b in tree[0].branches]
    assert ntuple[0].dataset["events"] == tree[0].dataset["events"]
    if preproc:
        assert tree[0].dataset["events"] < 8000 and "ht" in tree[0].columns
        assert ntuple[0].dataset["preproc"] == preproc
    np.testing.assert_array_equal(ntuple[1][:, order], tree[1])
    np.testing.assert_array_equal(ntuple[2], tree[2])


def test_rntuple_through_the_xrootd_proxy(xrootd, sample_files, rntuple_files, tmp_path):
    remote = [
        xrootd.proxy_url(xrootd.add_file(rntuple_files[n], f"rntuple/{n}.root"))
        for n in ("signal", "background")
    ]
    params = {"chunk_size": 1000, "nevts": 3000}
    local = stream(
        write_workflow(tmp_path / "l", [sample_files["signal"], sample_files["background"]], params=params)
    )
    near = stream(
        write_workflow(tmp_path / "r", [rntuple_files["signal"], rntuple_files["background"]], params=params)
    )
    far = stream(write_workflow(tmp_path / "x", remote, params=params))
    np.testing.assert_array_equal(far[1], near[1])
    order = [near[0].columns.index(c) for c in local[0].columns]
    np.testing.assert_array_equal(far[1][:, order], local[1])


def test_read_command_on_rntuples(rntuple_files, tmp_path):
    paths = write_workflow(tmp_path / "wf", [rntuple_files["signal"], rntuple_files["background"]])
    result = read_workflow(paths["files"], paths["labels"], paths["params"], None, paths["specs"])
    assert result["events"] == 8000 and result["mb_per_s"] > 0


def write_odd_rntuple(path):
    n = 6
    data = {
        "x": np.arange(n, dtype=np.float32),
        "flags": np.arange(n) % 2 == 0,
        "name": ak.Array(["a", "bb", "c", "d", "e", "f"]),
        "pair": ak.zip({"a": np.arange(n), "b": np.arange(n) * 0.5}),
        "nested": ak.Array([[[1.0], []]] * n),
    }
    with uproot.recreate(path) as f:
        f.mkrntuple("Events", data)
    return path


def test_fields_a_model_cannot_take_are_skipped_by_default(tmp_path):
    a, b = write_odd_rntuple(tmp_path / "a.root"), write_odd_rntuple(tmp_path / "b.root")
    spec, x, _ = stream(write_workflow(tmp_path / "wf", [a, b], params={"exclude_branches": []}))
    assert spec.columns == ["flags", "x"]
    assert x.shape == (12, 2)


@pytest.mark.parametrize(
    ("params", "preproc", "culprit"),
    [
        ({"selected_branches": ["x", "name"]}, None, r"'name' \(std::string\)"),
        ({"selected_branches": ["x", "nested"]}, None, r"'nested' \(std::vector<std::vector<double>>\)"),
        ({"selected_branches": ["pair"]}, None, r"'pair' \(a record of fields\)"),
        ({}, {"flat_cut": {"name": {"cut": "name > 0"}}}, r"'name' \(std::string\)"),
    ],
)
def test_unsupported_field_types_are_refused_by_name(params, preproc, culprit, tmp_path):
    a, b = write_odd_rntuple(tmp_path / "a.root"), write_odd_rntuple(tmp_path / "b.root")
    paths = write_workflow(tmp_path / "wf", [a, b], params=params, preproc=preproc)
    with pytest.raises(BadInputError, match=f"unsupported type for branch\\(es\\) {culprit}"):
        stream(paths)
