"""Event weights, per-file normalisation and regression targets (issue 17): through the real stream, trainer,
bundle and metrics, on small ROOT files written here with uproot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from appliance.data.features import FeatureSpec
from appliance.data.streaming import TEST, assign_split, uniform_hash
from appliance.training.evaluation import regression_metrics, roc_metrics
from appliance.training.feature_cache import FeatureCache
from appliance.training.holdout import HoldOut
from appliance.training.run import run_training
from servicecore.errors import BadInputError
from tests.training.conftest import write_workflow

REGRESSION_MODEL = {
    "layers": [
        {"type": "Dense", "units": 16, "activation": "relu"},
        {"type": "Dense", "units": 2, "activation": "linear"},
    ],
    "loss": "mse",
    "optimizer": {"name": "adam", "learning_rate": 0.02},
}


def write_events(path: Path, n: int, shift: float, seed: int, negative: float = 0.0) -> Path:
    """Two features, a jet collection, a generator weight (a share ``negative`` of it negative) and two
    regression targets that are functions of the features."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1.0, n).astype(np.float32)
    x2 = rng.normal(-shift, 1.0, n).astype(np.float32)
    counts = rng.poisson(2.0, n).astype(np.int32)
    jets = ak.unflatten(rng.exponential(20.0, int(counts.sum())).astype(np.float32), counts)
    # Weights grow with x1 so that the weighted ROC differs from the unweighted one.
    weight = (0.5 + np.abs(x1)).astype(np.float32)
    weight[rng.random(n) < negative] *= -1
    with uproot.recreate(path) as f:
        f["Events"] = {
            "x1": x1,
            "x2": x2,
            "Jet_pt": jets,
            "genWeight": weight,
            "energy": (2.0 * x1 - x2 + rng.normal(0, 0.1, n)).astype(np.float32),
            "mass": (x1 * 0.5 + 1.0).astype(np.float32),
            "event": np.arange(n, dtype=np.int64),
        }
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("weighted")
    return {
        "signal": write_events(base / "signal.root", 1500, 0.7, 1),
        "background": write_events(base / "background.root", 2500, -0.3, 2),
        "negative": write_events(base / "negative.root", 2000, -0.3, 3, negative=0.1),
    }


def train(tmp_path: Path, files: list[Path], params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    workflow = write_workflow(tmp_path / "wf", files, [1, 0][: len(files)], params=params, **kw)
    return run_training(**workflow.kwargs(fout=tmp_path / "out" / "model"))


def test_weighted_roc_and_auc_equal_scikit_learns_on_the_same_scores_and_weights() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 3000)
    scores = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    weights = rng.exponential(1.0, 3000) * (1 + 2 * y * scores)
    metrics, curves = roc_metrics(y, np.column_stack([1 - scores, scores]), ["b", "s"], weights)
    expected_weighted = roc_auc_score(y, scores, sample_weight=weights)
    assert metrics["auc_weighted"] == pytest.approx(expected_weighted, abs=1e-12)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert metrics["auc_weighted"] != pytest.approx(metrics["auc"], abs=1e-3)
    assert curves is not None and set(curves["weighted"]) == {"s"}
    # Three classes: the one-vs-rest macro average, weighted too.
    y3 = rng.integers(0, 3, 3000)
    p3 = rng.dirichlet([1, 1, 1], 3000) + np.eye(3)[y3] * 0.3
    p3 /= p3.sum(axis=1, keepdims=True)
    metrics3, _ = roc_metrics(y3, p3, ["a", "b", "c"], weights)
    expected = roc_auc_score(y3, p3, multi_class="ovr", average="macro", sample_weight=weights)
    assert metrics3["auc_weighted"] == pytest.approx(expected, abs=1e-12)


def test_the_terminal_line_at_the_end_names_rmse_or_the_weighted_auc() -> None:
    from appliance.training.command import describe_progress

    done = {"stage": "done", "bundle": "b"}
    assert "RMSE 0.5" in describe_progress({**done, "metrics": {"loss": 0.25, "rmse": 0.5}})
    line = describe_progress({**done, "metrics": {"loss": 0.3, "auc": 0.8, "auc_weighted": 0.75}})
    assert "AUC 0.8" in line and "weighted AUC 0.75" in line


def test_rmse_per_target_and_weighted() -> None:
    targets = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    predictions = targets + np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 2.0]])
    weights = np.array([1.0, 1.0, 2.0])
    metrics, plot = regression_metrics(targets, predictions, ["a", "b"], weights)
    assert metrics["rmse_per_target"]["a"]["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert metrics["rmse_per_target"]["a"]["rmse_weighted"] == pytest.approx(np.sqrt(3 / 4))
    assert metrics["rmse_per_target"]["b"]["mean_residual"] == pytest.approx(2 / 3)
    assert metrics["rmse"] == pytest.approx(np.sqrt((1 + 0 + 1 + 4) / 6))
    assert len(plot["a"]["target"]) == 3


def test_the_feature_cache_and_hold_out_parts_keep_weights_and_targets_with_their_rows(tmp_path) -> None:
    dim, rows = 2, 6000
    x = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    targets = np.column_stack([np.arange(rows), -np.arange(rows)]).astype(np.float32)  # a regression's
    weights = (np.arange(rows) * 0.5).astype(np.float32)
    cache = FeatureCache(tmp_path, dim, rows * (dim * 4 + 12), seed=3, label_bytes=12)
    holdout = HoldOut(tmp_path, "test", dim, block_rows=1000, keep_probability=0.5, seed=3)
    assert cache.plan(rows)
    for start in range(0, rows, 700):
        part = slice(start, start + 700)
        cache.append(x[part], targets[part], weights[part])
        holdout.append(x[part], targets[part], weights[part])
    cache.finish()
    blocks = list(cache.blocks(1))
    index = (np.concatenate([b[0] for b in blocks])[:, 0] / dim).astype(int)
    assert sorted(index.tolist()) == list(range(rows))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), targets[index])
    np.testing.assert_array_equal(np.concatenate([b[2] for b in blocks]), weights[index])
    kept = (np.concatenate([b[0] for b in holdout.arrays()])[:, 0] / dim).astype(int)
    assert 0.4 * rows < len(kept) < 0.6 * rows  # sampled ...
    np.testing.assert_array_equal(holdout.labels(), targets[kept])  # ... with targets and weights alike
    np.testing.assert_array_equal(holdout.weights(), weights[kept])


@pytest.mark.slow
def test_a_weighted_training_reports_the_weighted_auc_of_its_test_events(tmp_path, files) -> None:
    """The weighted AUC in metrics.json equals scikit-learn's on the test events' scores (the bundle's own
    SavedModel on features rebuilt from the files) and weights (genWeight times the file's normalisation)."""
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    cross_section, file_weight = [2.0, 30.0], [1.0, 0.5]
    params = {
        "weight": "genWeight",
        "cross_section": cross_section,
        "luminosity": 10.0,
        "file_weight": file_weight,
        "epochs": 2,
    }
    result = train(tmp_path, [files["signal"], files["background"]], params)
    bundle = Path(result["bundle"])
    document = json.loads((bundle / "metrics.json").read_text())
    features = FeatureSpec.from_dict(json.loads((bundle / "params.json").read_text())["features"])
    assert "genWeight" not in features.columns  # the weight is no feature
    weights_doc = document["weights"]
    assert weights_doc["expression"] == "genWeight"

    serve = tf.saved_model.load(str(bundle)).signatures["serving_default"]
    scores, labels, weights = [], [], []
    for index, (name, label) in enumerate([("signal", 1), ("background", 0)]):
        arrays = uproot.open(files[name])["Events"].arrays(library="ak")
        genweight = np.asarray(arrays["genWeight"], dtype=np.float64)
        factor = file_weight[index] * cross_section[index] * 10.0 / genweight.sum()
        assert weights_doc["file_factor"][index] == pytest.approx(factor, rel=1e-9)
        test = assign_split(uniform_hash(7, index, np.arange(len(arrays))), 0.2, 0.2) == TEST
        x = features.transform({f: arrays[f][test] for f in arrays.fields})
        scores.append(serve(inputs=tf.constant(x))["outputs"].numpy()[:, 0])
        labels.append(np.full(int(test.sum()), label))
        weights.append((genweight[test] * factor).astype(np.float32))
    y, s, w = np.concatenate(labels), np.concatenate(scores), np.concatenate(weights)
    test_metrics = document["test"]
    assert test_metrics["events"] == len(y)
    assert test_metrics["sum_of_weights"] == pytest.approx(w.sum(), rel=1e-5)
    assert test_metrics["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-4)
    assert test_metrics["auc_weighted"] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-4)
    assert test_metrics["auc_weighted"] > 0.7
    assert (bundle / "roc.png").stat().st_size > 0


@pytest.mark.slow
def test_a_regression_learns_its_targets_and_reports_rmse_and_residuals(tmp_path, files) -> None:
    params = {"target": ["energy", "mass"], "epochs": 4, "batch_size": 32}
    workflow = write_workflow(
        tmp_path / "wf", [files["signal"], files["background"]], [0, 0], params=params, model=REGRESSION_MODEL
    )
    result = run_training(**workflow.kwargs(fout=tmp_path / "out" / "energy"))
    bundle = Path(result["bundle"])
    document = json.loads((bundle / "metrics.json").read_text())
    assert document["task"] == "regression" and document["targets"] == ["energy", "mass"]
    per_target = document["test"]["rmse_per_target"]
    # Learnt: well below the spread of the targets themselves.
    assert per_target["energy"]["rmse"] < 0.3 * per_target["energy"]["target_std"]
    assert per_target["mass"]["rmse"] < 0.5 * per_target["mass"]["target_std"]
    assert (bundle / "residuals.png").stat().st_size > 0 and not (bundle / "roc.png").exists()
    assert (bundle / "labels.txt").read_text().split() == ["energy", "mass"]
    columns = json.loads((bundle / "params.json").read_text())["features"]["columns"]
    assert "energy" not in columns and "mass" not in columns


@pytest.mark.slow
def test_a_weighted_torch_regression_trains(tmp_path, files) -> None:
    params = {"target": ["energy"], "weight": "genWeight", "epochs": 2, "batch_size": 64}
    model = {**REGRESSION_MODEL, "framework": "torch", "layers": [*REGRESSION_MODEL["layers"][:1]]}
    model["layers"] = [*model["layers"], {"type": "Dense", "units": 1}]
    workflow = write_workflow(tmp_path / "wf", [files["signal"]], [0], params=params, model=model)
    result = run_training(**workflow.kwargs(fout=tmp_path / "out" / "t"))
    test = result["metrics"]
    assert test["rmse"] < test["rmse_per_target"]["energy"]["target_std"]
    assert "rmse_weighted" in test


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator",
    [
        "from sklearn.linear_model import SGDRegressor as E\nARGS = dict(random_state=0, eta0=0.01)",
        "from xgboost import XGBRegressor as E\nARGS = dict(n_estimators=30, max_depth=3)",
    ],
)
def test_weighted_estimator_regressions_train_and_export_servable_onnx(tmp_path, files, estimator) -> None:
    model = f"{estimator}\n\ndef model(idim):\n    return E(**ARGS)\n"
    params = {"target": ["energy"], "weight": "genWeight", "epochs": 2, "normalisation": "standard"}
    workflow = write_workflow(
        tmp_path / "wf", [files["signal"], files["background"]], [0, 0], params=params, model=model,
        model_suffix=".py",
    )  # fmt: skip
    result = run_training(**workflow.kwargs(fout=tmp_path / "out" / "e"))
    document = json.loads((Path(result["bundle"]) / "metrics.json").read_text())
    test = document["test"]
    assert test["rmse"] < 0.5 * test["rmse_per_target"]["energy"]["target_std"]
    assert "rmse_weighted" in test
    assert document["onnx"]["servable"], document["onnx"]["reason"]
    assert (Path(result["bundle"]) / "model.onnx").is_file()


# -- bad input -------------------------------------------------------------------------------------------


def refused(tmp_path: Path, files: list[Path], params: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(BadInputError) as caught:
        train(tmp_path, files, params, **kw)
    assert not (tmp_path / "out" / "model").exists()  # nothing written, nothing published
    return str(caught.value)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"weight": "genWeight +"}, ["weight", "cannot parse"]),
        ({"weight": 3}, ["weight must be an expression"]),
        ({"cross_section": [1.0, 2.0]}, ["cross_section needs a weight"]),
        ({"weight": "genWeight", "cross_section": [1.0]}, ["cross_section has 1 value", "2 file"]),
        ({"weight": "genWeight", "file_weight": [1.0, -2.0]}, ["file_weight", "positive"]),
        ({"negative_weights": "drop"}, ["negative_weights must be one of"]),
        ({"target": ["energy"], "class_weight": "balanced"}, ["class_weight"]),
    ],
)
def test_bad_weight_settings_are_refused_before_any_data_is_read(tmp_path, files, params, words) -> None:
    message = refused(tmp_path, [files["signal"], files["background"]], params)
    for word in words:
        assert word in message


def test_a_weight_expression_that_is_not_a_number_per_event_is_refused(tmp_path, files) -> None:
    message = refused(tmp_path, [files["signal"], files["background"]], {"weight": "genWeight * Jet_pt"})
    assert "'genWeight * Jet_pt' is not numeric per event" in message and "'Jet_pt'" in message


def test_a_jagged_regression_target_is_refused(tmp_path, files) -> None:
    message = refused(tmp_path, [files["signal"]], {"target": ["Jet_pt"]}, model=REGRESSION_MODEL)
    assert "regression target 'Jet_pt' is jagged" in message


def test_a_classification_loss_for_regression_targets_is_refused(tmp_path, files) -> None:
    model = {**REGRESSION_MODEL, "loss": "binary_crossentropy"}
    model["layers"] = [*REGRESSION_MODEL["layers"][:1], {"type": "Dense", "units": 1}]
    message = refused(tmp_path, [files["signal"]], {"target": ["energy"]}, model=model)
    assert "regression targets need a regression loss" in message


@pytest.mark.slow
def test_negative_weights_are_refused_unless_the_params_say_what_the_loss_does(tmp_path, files) -> None:
    both = [files["signal"], files["negative"]]
    message = refused(tmp_path, both, {"weight": "genWeight"})
    assert str(files["negative"]) in message and "negative weight" in message
    assert 'negative_weights to "abs" or "zero"' in message
    result = train(tmp_path / "zero", both, {"weight": "genWeight", "negative_weights": "zero", "epochs": 1})
    document = json.loads((Path(result["bundle"]) / "metrics.json").read_text())
    assert document["weights"]["negative_selected"][0] == 0
    assert document["weights"]["negative_selected"][1] > 100
    assert result["metrics"]["auc_weighted"] is not None
