"""Continuous training: a run that starts from a published model, trains it on new files and publishes the
next version, with the old and the new model compared on the same new test events.

A first model is trained briefly (few events, one epoch, a small learning rate) so that there is room to
improve; the warm start reads other files (``background_twin`` instead of ``background``) for longer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.training.run import run_training
from servicecore.errors import BadInputError
from tests.training.conftest import write_workflow
from tests.training.test_frameworks import TORCH_MODEL

pytestmark = pytest.mark.slow

WEAK = {"epochs": 1, "nevts": 600, "batch_size": 64}
MORE = {"epochs": 3, "batch_size": 64}
KERAS_MODEL = {
    "layers": [
        {"type": "Dense", "units": 16, "activation": "relu"},
        {"type": "Dense", "units": 1, "activation": "sigmoid"},
    ],
    "loss": "binary_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.002},
}
NARROWER_MODEL = {**KERAS_MODEL, "layers": [{"type": "Dense", "units": 8}, *KERAS_MODEL["layers"][1:]]}
XGBOOST_MODEL = """
from xgboost import XGBClassifier

def model(idim):
    return XGBClassifier(n_estimators=5, max_depth=2, learning_rate=0.3, random_state=0)
"""
FOREST_MODEL = """
from sklearn.ensemble import RandomForestClassifier

def model(idim):
    return RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0)
"""


def train(
    base: Path,
    files: list[Any],
    model: Any,
    params: dict[str, Any],
    init_model: Path | None = None,
    name: str = "alice.higgs",
) -> dict[str, Any]:
    suffix = ".py" if isinstance(model, str) else ".json"
    index = len(list(base.glob("workflow*")))
    workflow = write_workflow(
        base / f"workflow{index}", files, [1, 0], params=params, model=model, model_suffix=suffix
    )
    return run_training(
        **workflow.kwargs(fout=base / f"out{index}" / "model"),
        publish=base / "models",
        name=name,
        specs=base / f"specs{index}.json",
        init_model=init_model,
    )


def first_and_new_files(sample_files: dict[str, Path]) -> tuple[list[Path], list[Path]]:
    return (
        [sample_files["signal"], sample_files["background"]],
        [sample_files["signal"], sample_files["background_twin"]],
    )


def test_a_keras_model_improves_on_new_data_and_becomes_the_next_version(tmp_path, sample_files):
    first_files, new_files = first_and_new_files(sample_files)
    first = train(tmp_path, first_files, KERAS_MODEL, WEAK)
    assert first["version"] == 1
    published = Path(first["published"])
    second = train(tmp_path, new_files, KERAS_MODEL, MORE, init_model=published)

    assert second["name"] == "alice.higgs" and second["version"] == 2
    test = second["metrics"]
    assert test["auc"] > test["init_model_auc"] > 0.5  # the old model on the same new test events
    assert test["loss"] < test["init_model_loss"]
    metrics = json.loads((Path(second["published"]) / "metrics.json").read_text())
    assert metrics["init_model"]["name"] == "alice.higgs" and metrics["init_model"]["version"] == 1
    # It really started from the published weights: before training it computed the old model's outputs.
    assert metrics["init_model"]["start_max_abs_diff"] < 1e-5
    # The input transform is the old model's (its normalisation constants), over the new data set.
    old = json.loads((published / "params.json").read_text())["features"]
    new = json.loads((Path(second["published"]) / "params.json").read_text())["features"]
    assert new["flat"] == old["flat"] and new["jagged"] == old["jagged"]
    assert new["dataset"]["files"][1]["url"].endswith("background_twin.root")


def test_a_pytorch_module_starts_from_its_state_dict(tmp_path, sample_files):
    first_files, new_files = first_and_new_files(sample_files)
    options = {"training": {"loss": "bce_with_logits", "learning_rate": 0.002}}
    first = train(tmp_path, first_files, TORCH_MODEL, {**WEAK, **options})
    second = train(tmp_path, new_files, TORCH_MODEL, {**MORE, **options}, init_model=Path(first["published"]))
    assert second["version"] == 2
    assert second["metrics"]["auc"] > second["metrics"]["init_model_auc"]
    metrics = json.loads((Path(second["bundle"]) / "metrics.json").read_text())
    assert metrics["init_model"]["start_max_abs_diff"] < 1e-4  # ONNX runtime against torch


def test_an_xgboost_model_boosts_on_from_the_old_booster(tmp_path, sample_files):
    import joblib

    first_files, new_files = first_and_new_files(sample_files)
    first = train(tmp_path, first_files, XGBOOST_MODEL, WEAK)
    second = train(
        tmp_path, new_files, XGBOOST_MODEL, {**MORE, "epochs": 1}, init_model=Path(first["published"])
    )
    estimator = joblib.load(Path(second["bundle"]) / "native" / "estimator.joblib")
    assert estimator.get_booster().num_boosted_rounds() == 10  # 5 rounds, then 5 more
    assert second["metrics"]["init_model_auc"] is not None and second["metrics"]["auc"] > 0.5


def test_an_estimator_that_cannot_continue_is_refused_and_nothing_is_published(tmp_path, sample_files):
    first_files, new_files = first_and_new_files(sample_files)
    first = train(tmp_path, first_files, FOREST_MODEL, WEAK)
    with pytest.raises(BadInputError, match=r"RandomForestClassifier cannot continue training.*partial_fit"):
        train(tmp_path, new_files, FOREST_MODEL, MORE, init_model=Path(first["published"]))
    assert sorted(p.name for p in (tmp_path / "models" / "alice.higgs").iterdir() if p.is_dir()) == ["1"]


@pytest.mark.parametrize(
    ("params", "model", "message"),
    [
        ({}, KERAS_MODEL, r"another feature spec: .*gives branch\(es\) MET_pt, MET_phi"),
        (
            {"exclude_branches": ["MET_*"], "normalisation": "standard"},
            KERAS_MODEL,
            "normalisation 'standard' differs from init_model alice.higgs/1's 'minmax'",
        ),
        (
            {"exclude_branches": ["MET_*"]},
            NARROWER_MODEL,
            "weights do not fit this job's model",
        ),
        ({"exclude_branches": ["MET_*"]}, TORCH_MODEL, "is a keras model; this job's model is torch"),
    ],
    ids=["other-branches", "other-normalisation", "other-architecture", "other-framework"],
)
def test_a_warm_start_that_does_not_fit_is_refused_naming_the_culprit(
    tmp_path, sample_files, params, model, message
):
    first_files, new_files = first_and_new_files(sample_files)
    first = train(tmp_path, first_files, KERAS_MODEL, {**WEAK, "exclude_branches": ["MET_*"]})
    extra = {"training": {"loss": "bce_with_logits"}} if isinstance(model, str) else {}
    with pytest.raises(BadInputError, match=message):
        train(tmp_path, new_files, model, {**MORE, **params, **extra}, init_model=Path(first["published"]))
    assert not (tmp_path / "models" / "alice.higgs" / "2").exists()


def test_a_long_list_of_differing_branches_is_named_in_part_and_counted(tmp_path):
    from appliance.data.features import BranchStats, FeatureSpec
    from appliance.training.warm_start import InitModel, check_features

    spec = FeatureSpec(flat=[BranchStats(name="MET_pt", kind="flat")], jagged=[])
    init = InitModel(tmp_path, "alice.higgs", 1, {}, spec, ["0", "1"])
    extra = [(f"HLT_path{i}", "flat") for i in range(100)]
    with pytest.raises(BadInputError) as caught:
        check_features(init, [("MET_pt", "flat"), *extra], {}, ["0", "1"])
    message = caught.value.message
    assert "HLT_path0, HLT_path1" in message and "HLT_path11 and 88 more" in message
    assert "HLT_path12" not in message
    with pytest.raises(BadInputError, match=r"MET_pt \(flat there, jagged here\) changed kind"):
        check_features(init, [("MET_pt", "jagged")], {}, ["0", "1"])
    with pytest.raises(BadInputError, match=r"its classes are \['0', '1'\], this job's \['a', 'b'\]"):
        check_features(init, [("MET_pt", "flat")], {}, ["a", "b"])
    check_features(init, [("MET_pt", "flat")], {}, ["0", "1"])  # the same spec passes
