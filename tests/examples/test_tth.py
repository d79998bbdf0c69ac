"""The ttH example (examples/tth/) in reduced form: its samples carry the real NanoAOD names and types, and
the whole workflow (samples, training, predict into friend trees, the comparison with cuts) runs and reports
numbers that an independent computation from the files reproduces."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import awkward as ak
import numpy as np
import pytest
import uproot

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tth"


def example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tth_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_samples_have_the_real_nanoaod_branch_names_and_types(nanoaod_sample, tmp_path):
    samples = example_module("samples")
    for process in samples.PROCESSES:
        path = samples.write_sample(tmp_path / f"{process}.root", process, 500, seed=3)
        assert samples.check_against(path, nanoaod_sample) == []
        with uproot.open(path) as handle:
            events = handle["Events"].arrays(["nJet", "Jet_pt", "Jet_btagCSVV2"])
        np.testing.assert_array_equal(ak.num(events["Jet_pt"]), events["nJet"])
        assert ak.all(events["Jet_pt"][:, :-1] >= events["Jet_pt"][:, 1:])  # sorted by pT, as NanoAOD


def test_the_weighted_roc_area_equals_scikit_learns():
    from sklearn.metrics import roc_auc_score

    compare = example_module("compare")
    rng = np.random.default_rng(4)
    signal = {"score": np.round(rng.beta(4, 2, 3000), 2), "weight": rng.uniform(0.2, 2.0, 3000)}
    background = {"score": np.round(rng.beta(2, 4, 4000), 2), "weight": rng.uniform(0.2, 2.0, 4000)}
    signal["score"][:200] = background["score"][:300] = compare.FAILED  # ties, as failed preselection
    ours = compare.area(*compare.roc(signal, background))
    truth = np.r_[np.ones(3000), np.zeros(4000)]
    theirs = roc_auc_score(truth, np.r_[signal["score"], background["score"]],
                           sample_weight=np.r_[signal["weight"], background["weight"]])  # fmt: skip
    assert ours == pytest.approx(theirs, abs=1e-9)


@pytest.mark.slow
def test_the_example_runs_in_reduced_form(tmp_path):
    out = tmp_path / "tth"
    run = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), str(out), "--events", "3000", "--epochs", "2"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cut-based: >= 6 jets, >= 3 b-tags" in run.stdout and "model: score >=" in run.stdout
    result = json.loads((out / "comparison.json").read_text())
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")

    # Friend trees: one per test file, entry by entry with it.
    columns = {}
    for process, friend in (("tth", "tth_test_scores.root"), ("ttbar", "ttbar_test_scores.root")):
        with uproot.open(out / "data" / f"{process}_test.root") as handle:
            events = handle["Events"].arrays(["nJet", "Jet_btagCSVV2", "genWeight"])
        with uproot.open(out / "friends" / friend) as handle:
            scores = handle["scores"].arrays(library="np")
        assert len(scores["entry"]) == len(events) == 1500
        np.testing.assert_array_equal(scores["passed"], ak.to_numpy(events["nJet"]) >= 4)  # the preselection
        columns[process] = (events, scores)

    # The reported efficiencies, recomputed from the files.
    threshold = result["model"]["threshold"]
    for process, key in (("tth", "signal_efficiency"), ("ttbar", "background_efficiency")):
        events, scores = columns[process]
        weight = ak.to_numpy(events["genWeight"]).astype(np.float64)
        btags = ak.to_numpy(ak.sum(events["Jet_btagCSVV2"] > 0.8484, axis=1))
        cut = (ak.to_numpy(events["nJet"]) >= 6) & (btags >= 3)
        assert result["cut_based"][key] == pytest.approx(weight[cut].sum() / weight.sum(), abs=1e-9)
        kept = scores["passed"] & (scores["score_1"] >= threshold)
        assert result["model"][key] == pytest.approx(weight[kept].sum() / weight.sum(), abs=1e-9)
    # The same signal efficiency, to the granularity of 1500 events.
    assert abs(result["model"]["signal_efficiency"] - result["cut_based"]["signal_efficiency"]) < 0.01
    assert 0 < result["cut_based"]["background_efficiency"] < result["cut_based"]["signal_efficiency"] < 1
    # The training was weighted with genWeight (params.json), each sample normalised to a unit sum.
    metrics = result["training"]["test_metrics"]
    assert result["auc"] > 0.8 and metrics["auc"] > 0.8 and metrics["auc_weighted"] > 0.8
    assert metrics["sum_of_weights"] > 0
