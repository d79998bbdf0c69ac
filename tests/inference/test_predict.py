"""Batch inference end to end: friend trees equal to TFaaS's predictions, entry by entry, for TTree and
RNTuple inputs read through the XRootD proxy, written locally or back through the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from appliance.data.features import FeatureSpec
from appliance.inference.predict import MANIFEST, PredictOptions, run_predict
from servicecore.errors import BadInputError
from tests.inference.conftest import Trained

pytestmark = pytest.mark.slow

# Worker threads in this process (the default); the CLI test runs worker processes too.
THREADS = PredictOptions(workers=2, processes=False, task_entries=1100, step=400)


def tfaas_scores(trained: Trained, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """What TFaaS's predictor answers for the same events, and which events pass the model's cut."""
    from tfaas.predictor import load_model
    from tfaas.repository import read_bundle

    params = json.loads((trained.bundle / "params.json").read_text())
    spec = FeatureSpec.from_dict(params["features"])
    with uproot.open(source) as handle:
        arrays = handle["Events"].arrays([*spec.input_branches, "MET_pt"], library="ak")
    passed = ak.to_numpy(arrays["MET_pt"]) > 20
    columns = {name: arrays[name][passed] for name in spec.input_branches}
    model = load_model(read_bundle(trained.name, 1, trained.bundle), numpy_engine=False)
    return model.predict(spec.transform(columns)), passed


def check_friends(trained: Trained, form: str, directory: Path, summary: dict) -> None:
    for name in ("signal", "background"):
        source = trained.inputs[form][name]
        expected, passed = tfaas_scores(trained, source)
        with uproot.open(source) as handle:
            entries = handle["Events"].num_entries
        with uproot.open(directory / f"{name}_scores.root") as handle:
            friend = handle["scores"].arrays(library="np")
        assert sorted(friend) == ["entry", "passed", "score_1"]
        assert len(friend["entry"]) == entries
        np.testing.assert_array_equal(friend["entry"], np.arange(entries))
        np.testing.assert_array_equal(friend["passed"], passed)
        assert 0 < passed.sum() < entries
        np.testing.assert_allclose(friend["score_1"][passed], expected[:, 0], rtol=1e-5, atol=1e-6)
        assert np.isnan(friend["score_1"][~passed]).all()
        record = next(f for f in summary["files"] if f["friend"] == f"{name}_scores.root")
        assert record["entries"] == entries and record["passed"] == passed.sum()


@pytest.mark.parametrize("form", ["ttree", "rntuple"])
def test_predict_through_the_xrootd_proxy_equals_tfaas(form, trained, xrootd, tmp_path):
    urls = [
        xrootd.proxy_url(xrootd.add_file(trained.inputs[form][n], f"predict/{form}/{n}.root"))
        for n in ("signal", "background")
    ]
    summary = run_predict(urls, trained.bundle, tmp_path / "friends", THREADS)
    check_friends(trained, form, tmp_path / "friends", summary)
    assert sorted(p.name for p in (tmp_path / "friends").iterdir()) == [
        "background_scores.root",
        MANIFEST,
        "signal_scores.root",
    ]
    assert json.loads((tmp_path / "friends" / MANIFEST).read_text())["events"] == summary["events"] == 8000


def test_friend_trees_written_back_through_the_xrootd_proxy(trained, xrootd, tmp_path):
    target = xrootd.data_dir / "friends" / "run1"
    target.parent.mkdir(exist_ok=True)
    target.parent.chmod(0o777)  # the xrootd user writes there
    files = [str(trained.inputs["ttree"][n]) for n in ("signal", "background")]
    summary = run_predict(files, trained.bundle, xrootd.proxy_url("friends/run1"), THREADS)
    assert sorted(p.name for p in target.iterdir()) == [
        "background_scores.root",
        MANIFEST,
        "signal_scores.root",
    ]
    check_friends(trained, "ttree", target, summary)
    with pytest.raises(BadInputError, match="already holds"):
        run_predict(files, trained.bundle, xrootd.proxy_url("friends/run1"), THREADS)


def test_files_without_the_models_branches_are_refused_and_nothing_is_written(trained, tmp_path):
    lacking = tmp_path / "lacking.root"
    with uproot.recreate(lacking) as f:
        f["Events"] = {"MET_pt": np.ones(5), "Jet_pt": ak.Array([[1.0]] * 5)}
    files = [str(trained.inputs["ttree"]["signal"]), str(lacking)]
    with pytest.raises(
        BadInputError, match=r"'alice.ttbar' needs what file\(s\) '.*lacking.root' lack"
    ) as err:
        run_predict(files, trained.bundle, tmp_path / "out", THREADS)
    assert "MET_sumEt" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_rntuple_field_of_another_type_is_named(trained, tmp_path):
    with uproot.open(trained.inputs["rntuple"]["signal"]) as handle:
        arrays = handle["Events"].arrays(library="ak")
    fields = {name: arrays[name] for name in arrays.fields}
    fields["MET_pt"] = ak.Array([str(v) for v in range(len(arrays))])
    odd = tmp_path / "odd.root"
    with uproot.recreate(odd) as f:
        f.mkrntuple("Events", fields)
    with pytest.raises(BadInputError, match=r"of another type than the training's: MET_pt \(std::string\)"):
        run_predict([str(odd)], trained.bundle, tmp_path / "out", THREADS)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_running_dask_scheduler_is_used_when_given(trained, tmp_path):
    from distributed import LocalCluster

    files = [str(trained.inputs["rntuple"]["background"])]
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None) as cluster:
        options = PredictOptions(scheduler=cluster.scheduler_address, task_entries=2000)
        summary = run_predict(files, trained.bundle, tmp_path / "out", options)
    assert summary["engine"] == {
        "scheduler": cluster.scheduler_address,
        "bundle": "shipped",
        "workers": 1,
        "threads": 2,
    }
    assert summary["files"][0]["entries"] == 5000


def test_an_unreachable_scheduler_is_a_clear_error(trained, tmp_path):
    from mlaas4hep_devtools.processes import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(BadInputError, match=f"cannot reach the Dask scheduler '{address}'"):
        run_predict(
            [str(trained.inputs["ttree"]["signal"])],
            trained.bundle,
            tmp_path / "out",
            PredictOptions(scheduler=address),
        )
    assert not (tmp_path / "out").exists()


def test_a_damaged_file_leaves_no_friend_tree_at_all(trained, tmp_path):
    data = bytearray(trained.inputs["ttree"]["background"].read_bytes())
    data[len(data) // 3 : len(data) * 2 // 3] = bytes(
        len(data) // 3
    )  # zeroes over the baskets, not the header
    damaged = tmp_path / "damaged.root"
    damaged.write_bytes(bytes(data))
    files = [str(trained.inputs["ttree"]["signal"]), str(damaged)]
    with pytest.raises(BadInputError, match=r"damaged\.root' is damaged"):
        run_predict(files, trained.bundle, tmp_path / "out", THREADS)
    assert not (tmp_path / "out").exists()  # not even the good file's friend, nor the staging folder


def test_a_destination_the_server_refuses_is_named_and_left_clean(trained, xrootd, tmp_path):
    locked = xrootd.data_dir / "locked"
    locked.mkdir(mode=0o755, exist_ok=True)  # owned by root: the xrootd user cannot write there
    files = [str(trained.inputs["ttree"]["signal"])]
    with pytest.raises(
        BadInputError, match=r"copying the friend tree to 'root://.*/locked/signal_scores.root'"
    ):
        run_predict(files, trained.bundle, xrootd.proxy_url("locked"), THREADS)
    assert list(locked.iterdir()) == []


def test_files_renamed_into_place_are_taken_back_when_a_later_one_fails(tmp_path):
    from appliance.inference.friends import Destination

    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a_scores.root").write_bytes(b"root")
    destination = Destination.parse(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError):
        destination.commit(staging, ["a_scores.root", "b_scores.root"])
    assert list((tmp_path / "out").iterdir()) == []
