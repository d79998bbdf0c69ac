"""The same separable workflow trained with a PyTorch module, a scikit-learn and an XGBoost estimator.

Each gets its test AUC, the Keras bundle's layout (``model.onnx`` instead of the SavedModel) and an ONNX
model whose outputs onnxruntime reproduces to 1e-5; bad input of each kind is refused naming the culprit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.training.run import run_training
from servicecore.errors import BadInputError
from tests.training.conftest import SMALL_MODEL, write_workflow

pytestmark = pytest.mark.slow

TORCH_MODEL = """
import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
"""
TORCH_MODEL_WITH_OPTIONS = """
import torch

def model(idim):
    module = torch.nn.Sequential(torch.nn.Linear(idim, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return module, {"loss": torch.nn.CrossEntropyLoss(), "optimizer": "adam", "learning_rate": 0.01}
"""
SGD_MODEL = """
from sklearn.linear_model import SGDClassifier

def model(idim):
    return SGDClassifier(loss="log_loss", random_state=0)
"""
FOREST_MODEL = """
from sklearn.ensemble import RandomForestClassifier

def model(idim):
    return RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
"""
XGBOOST_MODEL = """
from xgboost import XGBClassifier

def model(idim):
    return XGBClassifier(n_estimators=30, max_depth=3, learning_rate=0.3, random_state=0)
"""
UNCONVERTIBLE_MODEL = """
from sklearn.linear_model import SGDClassifier

class HomeMadeClassifier(SGDClassifier):  # no ONNX converter knows this class
    pass

def model(idim):
    return HomeMadeClassifier(loss="log_loss", random_state=0)
"""


def train_with(
    base: Path, files: list[Any], model: str, params: dict[str, Any] | None = None, publish: bool = True
) -> dict[str, Any]:
    workflow = write_workflow(
        base / "workflow", files, [1, 0], params=params, model=model, model_suffix=".py"
    )
    return run_training(
        **workflow.kwargs(fout=base / "out" / "model"),
        publish=base / "models" if publish else None,
        specs=base / "specs.json",
    )


def check_bundle(result: dict[str, Any], framework: str) -> dict[str, Any]:
    bundle = Path(result["bundle"])
    names = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "params.json", "labels.txt", "metrics.json", "roc.png", "loss.png"} <= names
    assert "saved_model.pb" not in names
    params = json.loads((bundle / "params.json").read_text())
    assert params["runtime"] == "onnx" and params["model"] == "model.onnx"
    assert params["framework"] == framework and params["servable"] is True
    assert params["input_name"] == "inputs" and params["output_name"] == "outputs"
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["framework"] == framework
    assert metrics["onnx"]["servable"] and metrics["onnx"]["checked_events"] == metrics["test"]["events"]
    assert metrics["onnx"]["max_abs_diff"] <= 1e-5 and metrics["onnx"]["tolerance"] == 1e-5
    assert result["published"] and (Path(result["published"]) / "model.onnx").is_file()
    native = {"torch": "state_dict.pt", "sklearn": "estimator.joblib", "xgboost": "estimator.joblib"}
    assert (bundle / "native" / native[framework]).is_file()
    return metrics


def onnx_outputs(bundle: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["outputs"], {"inputs": x})[0]


def test_a_pytorch_module_trains_through_the_xrootd_proxy(tmp_path, xrootd, sample_files):
    files = [
        xrootd.proxy_url(xrootd.add_file(sample_files[k], f"torch/{k}.root"))
        for k in ("signal", "background")
    ]
    result = train_with(
        tmp_path,
        files,
        TORCH_MODEL,
        params={"epochs": 3, "training": {"loss": "bce_with_logits", "learning_rate": 0.01}},
    )
    metrics = check_bundle(result, "torch")
    assert result["metrics"]["auc"] > 0.85 and result["metrics"]["accuracy"] > 0.7
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert metrics["events"]["read"] == 8000  # epochs 2 and 3 from the feature cache
    assert [h["events_from_cache"] for h in metrics["history"]][1:] == [metrics["events"]["train"]] * 2
    assert metrics["parameters"] == metrics["features"] * 16 + 16 + 16 + 1
    # The exported graph ends in the sigmoid the logits loss implies: probabilities in [0, 1], one column.
    x = np.random.default_rng(1).random((32, metrics["features"]), dtype=np.float32)
    outputs = onnx_outputs(Path(result["bundle"]), x)
    assert outputs.shape == (32, 1) and outputs.min() >= 0 and outputs.max() <= 1


def test_a_pytorch_module_with_its_loss_returned_beside_it(tmp_path, sample_files):
    result = train_with(
        tmp_path,
        [sample_files["signal"], sample_files["background"]],
        TORCH_MODEL_WITH_OPTIONS,
        publish=False,
    )
    assert result["metrics"]["auc"] > 0.85
    params = json.loads((Path(result["bundle"]) / "params.json").read_text())
    assert params["servable"] is True
    x = np.random.default_rng(2).random((16, params["features"]["dim"]), dtype=np.float32)
    outputs = onnx_outputs(Path(result["bundle"]), x)
    assert outputs.shape == (16, 2)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_streaming_sklearn_estimator_learns_with_partial_fit(tmp_path, sample_files):
    result = train_with(tmp_path, [sample_files["signal"], sample_files["background"]], SGD_MODEL)
    metrics = check_bundle(result, "sklearn")
    assert result["metrics"]["auc"] > 0.85
    assert len(metrics["history"]) == 2  # partial_fit on every pass, the second from the feature cache
    assert metrics["sample"] is None


def test_an_estimator_without_partial_fit_trains_once_on_its_sample(tmp_path, sample_files):
    result = train_with(tmp_path, [sample_files["signal"], sample_files["background"]], FOREST_MODEL)
    metrics = check_bundle(result, "sklearn")
    assert result["metrics"]["auc"] > 0.85
    assert metrics["events"]["read"] == 8000  # one pass: the other epochs would change nothing
    assert len(metrics["history"]) == 1


def test_an_xgboost_model_trains_through_the_xrootd_proxy(tmp_path, xrootd, sample_files):
    files = [
        xrootd.proxy_url(xrootd.add_file(sample_files[k], f"xgb/{k}.root")) for k in ("signal", "background")
    ]
    result = train_with(tmp_path, files, XGBOOST_MODEL)
    check_bundle(result, "xgboost")
    assert result["metrics"]["auc"] > 0.85


def test_a_bounded_sample_is_used_only_when_the_user_opts_in(tmp_path, sample_files):
    files = [sample_files["signal"], sample_files["background"]]
    with pytest.raises(BadInputError, match=r"RandomForestClassifier cannot learn from a stream.*1000"):
        train_with(
            tmp_path / "refused", files, FOREST_MODEL, params={"training": {"max_sample_events": 1000}}
        )
    assert not (tmp_path / "refused" / "out" / "model").exists()
    result = train_with(
        tmp_path / "sampled",
        files,
        FOREST_MODEL,
        params={"training": {"max_sample_events": 1000, "allow_sample": True}},
        publish=False,
    )
    metrics = json.loads((Path(result["bundle"]) / "metrics.json").read_text())
    assert "random sample of 1000" in metrics["sample"]
    assert result["metrics"]["auc"] > 0.8


def test_a_model_onnx_cannot_convert_is_published_unservable_with_the_reason(tmp_path, sample_files):
    result = train_with(tmp_path, [sample_files["signal"], sample_files["background"]], UNCONVERTIBLE_MODEL)
    assert result["metrics"]["auc"] > 0.85
    published = Path(result["published"])
    params = json.loads((published / "params.json").read_text())
    assert params["runtime"] == "onnx" and params["servable"] is False
    assert "ONNX conversion failed" in params["unservable_reason"]
    assert not (published / "model.onnx").exists()
    assert (published / "metrics.json").is_file() and (published / "roc.png").is_file()


@pytest.mark.parametrize(
    ("source", "params", "message"),
    [
        (
            "def model(idim):\n    return 42\n",
            None,
            r"returned a int, not a Keras model, a PyTorch nn.Module",
        ),
        (TORCH_MODEL, None, r"a PyTorch module needs a loss"),
        (TORCH_MODEL, {"training": {"loss": "hinge"}}, r"unknown loss 'hinge'"),
        (TORCH_MODEL, {"training": {"loss": "cross_entropy"}}, r"1 output units but the data has 2"),
        (SGD_MODEL, {"training": {"warm": 1}}, r"unknown training option\(s\) warm"),
    ],
)
def test_bad_framework_models_are_refused_naming_the_culprit(tmp_path, sample_files, source, params, message):
    with pytest.raises(BadInputError, match=message):
        train_with(tmp_path, [sample_files["signal"], sample_files["background"]], source, params=params)
    assert not (tmp_path / "out" / "model").exists()
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_the_json_model_trains_with_pytorch_when_it_says_so(tmp_path, sample_files):
    model = json.dumps({**SMALL_MODEL, "framework": "torch"})
    workflow = write_workflow(
        tmp_path / "workflow", [sample_files["signal"], sample_files["background"]], [1, 0], model=model
    )
    result = run_training(**workflow.kwargs(fout=tmp_path / "out" / "json"), publish=tmp_path / "models")
    metrics = check_bundle(result, "torch")
    assert result["metrics"]["auc"] > 0.85
    assert metrics["parameters"] == metrics["features"] * 16 + 16 + 16 + 1
    # The module ends in the sigmoid of the JSON model again, in the export: probabilities, one column.
    x = np.random.default_rng(5).random((8, metrics["features"]), dtype=np.float32)
    outputs = onnx_outputs(Path(result["bundle"]), x)
    assert outputs.shape == (8, 1) and outputs.min() >= 0 and outputs.max() <= 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"framework": "jax"}, r"unknown \"framework\" 'jax'; known: keras, torch"),
        (
            {"layers": [{"type": "GaussianNoise", "stddev": 0.1}, {"type": "Dense", "units": 1}]},
            r"layer 1: GaussianNoise is not available with \"framework\": \"torch\"",
        ),
        ({"loss": "hinge"}, r"loss 'hinge' is not available with PyTorch"),
        ({"optimizer": {"name": "adam", "beta_1": 0.8}}, r"optimizer option\(s\) beta_1 are not available"),
    ],
)
def test_a_json_model_for_pytorch_is_checked_before_any_pass(tmp_path, change, message):
    from appliance.training.models import preflight_model

    path = tmp_path / "model.json"
    path.write_text(json.dumps({**SMALL_MODEL, "framework": "torch", **change}))
    with pytest.raises(BadInputError, match=message):
        preflight_model(path)
