"""Training on streamed ROOT data: real epochs, held-out test metrics, the bundle, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from appliance.training.run import run_training
from servicecore.errors import BadInputError
from tests.training.conftest import write_workflow

pytestmark = pytest.mark.slow


def train(workflow, fout: Path, **extra: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    result = run_training(**workflow.kwargs(fout=fout, **extra), progress=events.append)
    return result, events


@pytest.fixture(scope="module")
def separable(tmp_path_factory, sample_files):
    """One training on signal against background, shared by the tests that inspect its results."""
    base = tmp_path_factory.mktemp("separable")
    workflow = write_workflow(
        base / "workflow", [sample_files["signal"], sample_files["background"]], [1, 0], params={"epochs": 3}
    )
    result, events = train(
        workflow, base / "out" / "higgs", publish=base / "models", specs=base / "specs.json"
    )
    return {"result": result, "events": events, "base": base, "workflow": workflow}


def test_separable_classes_give_a_test_auc_well_above_one_half(separable):
    metrics = separable["result"]["metrics"]
    assert metrics["auc"] > 0.85
    assert metrics["accuracy"] > 0.7
    assert metrics["loss"] < 0.6


def test_test_and_validation_parts_are_held_out_in_the_original_proportions(separable):
    document = json.loads((Path(separable["result"]["bundle"]) / "metrics.json").read_text())
    events = document["events"]
    assert events["total"] == 8000
    assert events["train"] + events["validation"] + events["test"] == events["total"]
    assert events["test"] == pytest.approx(0.20 * 8000, rel=0.1)
    assert events["validation"] == pytest.approx(0.16 * 8000, rel=0.1)
    assert events["read"] == 8000  # one pass over the files; epochs 2 and 3 read the feature cache
    assert document["test"]["events"] == events["test"]
    assert document["test"]["class_events"][1] == pytest.approx(0.2 * 3000, rel=0.15)


def test_every_epoch_reports_progress_with_validation_and_rate(separable):
    stages = [e["stage"] for e in separable["events"]]
    assert stages[0] == "specs" and stages[-1] == "done"
    assert stages.index("evaluate") < stages.index("publish") < stages.index("done")
    epochs = [
        e for e in separable["events"] if e["stage"] == "train" and e["epoch"] > 0 and not e.get("partial")
    ]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    train_events = epochs[0]["events_trained"]
    assert [e["events_read"] for e in epochs] == [8000, 0, 0]
    assert [e["events_from_cache"] for e in epochs] == [0, train_events, train_events]
    for record in epochs:
        assert record["epochs"] == 3
        assert record["events_trained"] == train_events
        assert record["events_per_s"] > 0
        assert record["loss"] > 0 and record["val_loss"] > 0
        assert "time" in record
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    start = next(e for e in separable["events"] if e["stage"] == "train")
    assert start["device"].endswith(("CPU:0", "GPU:0")) and start["parameters"] > 0


def test_the_bundle_describes_itself(separable):
    bundle = Path(separable["result"]["bundle"])
    assert {
        "saved_model.pb",
        "variables",
        "params.json",
        "labels.txt",
        "metrics.json",
        "roc.png",
        "loss.png",
    } <= {p.name for p in bundle.iterdir()}
    params = json.loads((bundle / "params.json").read_text())
    assert params["name"] == "higgs" and params["model"] == "saved_model.pb"
    assert params["labels"] == "labels.txt"
    assert params["input_name"] == params["inputNode"] == "inputs"
    assert params["output_name"] == params["outputNode"] == "outputs"
    assert params["signature"] == "serving_default"
    spec_file = json.loads((separable["base"] / "specs.json").read_text())
    assert params["features"] == spec_file["features"]
    assert (bundle / "labels.txt").read_text() == "0\n1\n"
    for image in ("roc.png", "loss.png"):
        assert (bundle / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_the_bundle_is_published_as_version_one(separable):
    result = separable["result"]
    assert result["version"] == 1 and result["name"] == "higgs"
    published = Path(result["published"])
    assert published == separable["base"] / "models" / "higgs" / "1"
    assert json.loads((published / "params.json").read_text())["version"] == 1
    original = Path(result["bundle"]) / "saved_model.pb"
    assert (published / "saved_model.pb").read_bytes() == original.read_bytes()


def oracle_vector(features: dict[str, Any], events: dict[str, Any], i: int) -> list[float]:
    """The normalised vector of event ``i`` as the architecture defines it, one value at a time."""

    def normalise(stats: dict[str, Any], value: float) -> float:
        span = stats["max"] - stats["min"]
        return (value - stats["min"]) / span if span > 0 else 0.0

    vector = [normalise(b, float(events[b["name"]][i])) for b in features["flat"]]
    for b in features["jagged"]:
        values = list(events[b["name"]][i])
        vector += [
            normalise(b, float(values[k])) if k < len(values) else features["nan_value"]
            for k in range(b["length"])
        ]
    return vector


def test_plain_tensorflow_predicts_the_same_from_raw_branches_as_from_normal_vectors(separable, sample_files):
    import tensorflow as tf

    from appliance.data.features import FeatureSpec

    bundle = Path(separable["result"]["bundle"])
    params = json.loads((bundle / "params.json").read_text())
    serve = tf.saved_model.load(str(bundle)).signatures[params["signature"]]
    assert set(serve.structured_input_signature[1]) == {params["input_name"]}
    assert set(serve.structured_outputs) == {params["output_name"]}

    spec = FeatureSpec.from_dict(params["features"])
    with uproot.open(sample_files["signal"]) as handle:
        raw = handle["Events"].arrays(spec.input_branches, entry_stop=50, library="ak", how=dict)
    from_raw = spec.transform(raw)
    plain = {name: ak.to_list(values) for name, values in raw.items()}
    normalised = np.array([oracle_vector(params["features"], plain, i) for i in range(50)], dtype=np.float32)
    np.testing.assert_allclose(from_raw, normalised, atol=1e-6)

    predict_raw = serve(inputs=tf.constant(from_raw))["outputs"].numpy()
    predict_vector = serve(inputs=tf.constant(normalised))["outputs"].numpy()
    assert predict_raw.shape == (50, 1)
    np.testing.assert_allclose(predict_raw, predict_vector, atol=1e-5)
    assert predict_raw.mean() > 0.5  # signal events look like signal


def test_identical_distributions_give_a_test_auc_of_about_one_half(tmp_path, sample_files):
    workflow = write_workflow(
        tmp_path / "wf",
        [sample_files["background_twin"], sample_files["background"]],
        [1, 0],
        params={"epochs": 2},
    )
    result, _ = train(workflow, tmp_path / "out")
    assert 0.42 < result["metrics"]["auc"] < 0.58


def test_same_seed_same_model_and_an_earlier_bundle_is_replaced(tmp_path, sample_files):
    import tensorflow as tf

    workflow = write_workflow(
        tmp_path / "wf",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        params={"epochs": 1, "nevts": 2000},
    )

    def predictions() -> np.ndarray:
        dim = json.loads((tmp_path / "out" / "params.json").read_text())["features"]["dim"]
        probe = tf.constant(np.random.default_rng(0).random((20, dim), dtype=np.float32))
        serve = tf.saved_model.load(str(tmp_path / "out")).signatures["serving_default"]
        return serve(inputs=probe)["outputs"].numpy()

    first, _ = train(workflow, tmp_path / "out")
    first_predictions = predictions()
    second, _ = train(workflow, tmp_path / "out")
    assert second["metrics"] == first["metrics"]
    np.testing.assert_array_equal(predictions(), first_predictions)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "wf"]


def test_multiclass_with_balanced_class_weights(tmp_path, sample_files):
    model = {
        "layers": [
            {"type": "Dense", "units": 16, "activation": "relu"},
            {"type": "Dense", "units": 3, "activation": "softmax"},
        ],
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }
    files = [sample_files["signal"], sample_files["background"], sample_files["background_twin"]]
    workflow = write_workflow(
        tmp_path / "wf",
        files,
        ["signal", "background", "other"],
        params={"epochs": 2, "class_weight": "balanced"},
        model=model,
    )
    result, _ = train(workflow, tmp_path / "out")
    metrics = result["metrics"]
    assert set(metrics["auc_per_class"]) == {"background", "other", "signal"}
    assert metrics["auc_per_class"]["signal"] > 0.85
    assert 0.5 < metrics["auc"] < 1
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    weights = document["class_weight"]
    assert weights["0"] < weights["1"]  # 'background' (5000 events) weighs less than 'other' (3000)
    assert (tmp_path / "out" / "labels.txt").read_text().split() == ["background", "other", "signal"]


def test_python_model_file_in_the_original_style_trains(tmp_path, sample_files):
    source = """
from tensorflow import keras
def model(idim):
    m = keras.models.Sequential()
    m.add(keras.layers.Dense(8, activation="relu", input_shape=(idim,)))
    m.add(keras.layers.Dense(2, activation="softmax"))
    m.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return m
"""
    workflow = write_workflow(
        tmp_path / "wf",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        params={"epochs": 1, "nevts": 3000},
        model=source,
        model_suffix=".py",
    )
    result, _ = train(workflow, tmp_path / "out")
    assert result["metrics"]["auc"] > 0.6
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert document["test"]["auc"] == result["metrics"]["auc"]


# -- bad input and interruptions --------------------------------------------------------------------------


def write_tree(path: Path, values: dict[str, np.ndarray]) -> Path:
    with uproot.recreate(path) as handle:
        handle.mktree("Events", {name: array.dtype for name, array in values.items()})
        handle["Events"].extend(values)
    return path


def test_nan_or_infinite_values_in_a_branch_are_refused(tmp_path):
    good = write_tree(tmp_path / "good.root", {"a": np.arange(100.0), "b": np.ones(100)})
    values = np.arange(100.0)
    values[[3, 7]] = [np.nan, np.inf]
    bad = write_tree(tmp_path / "bad.root", {"a": values, "b": np.ones(100)})
    workflow = write_workflow(tmp_path / "wf", [good, bad], [0, 1])
    with pytest.raises(BadInputError, match=r"NaN or infinite values: a \(2\)"):
        train(workflow, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_single_class_is_refused(tmp_path, sample_files):
    workflow = write_workflow(tmp_path / "wf", [sample_files["signal"], sample_files["background"]], [1, 1])
    with pytest.raises(BadInputError, match="at least two classes"):
        train(workflow, tmp_path / "out")


def test_bad_model_is_refused_before_anything_is_written(tmp_path, sample_files):
    workflow = write_workflow(
        tmp_path / "wf",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        model={"layers": [{"type": "Transformer", "units": 3}]},
    )
    events: list[dict] = []
    with pytest.raises(BadInputError, match="unknown layer type 'Transformer'"):
        run_training(
            **workflow.kwargs(fout=tmp_path / "out", publish=tmp_path / "models"), progress=events.append
        )
    assert events == []  # refused before pass 1 reads any data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wf"]


def test_an_output_directory_holding_other_files_is_refused_before_training(tmp_path, sample_files):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    workflow = write_workflow(tmp_path / "wf", [sample_files["signal"], sample_files["background"]], [1, 0])
    events: list[dict] = []
    with pytest.raises(BadInputError, match="not empty"):
        run_training(**workflow.kwargs(fout=tmp_path / "out"), progress=events.append)
    assert events == []
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("stage", ["evaluate", "publish"])
def test_an_interrupted_training_leaves_no_partial_bundle(tmp_path, sample_files, stage):
    workflow = write_workflow(
        tmp_path / "wf",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        params={"epochs": 1, "nevts": 2000},
    )

    def interrupt(event: dict[str, Any]) -> None:
        if event["stage"] == stage:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(
            **workflow.kwargs(fout=tmp_path / "out" / "m", publish=tmp_path / "models"), progress=interrupt
        )
    leftovers = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert leftovers == ([] if stage == "evaluate" else ["m"])  # before publishing, the bundle is complete
    models = tmp_path / "models"
    assert not models.exists() or not [p for p in models.rglob("*") if p.is_file()]
