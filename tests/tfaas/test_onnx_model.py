"""tfaas.onnx_model on bundles the training wrote: same predict interface, the framework's outputs to 1e-5."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.training.run import run_training
from servicecore.errors import BadInputError, ConflictError
from tests.training.conftest import write_workflow
from tfaas.onnx_model import load_onnx_model
from tfaas.repository import read_bundle

pytestmark = pytest.mark.slow

TORCH_MODEL = """
import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))
"""
SGD_MODEL = """
from sklearn.linear_model import SGDClassifier

def model(idim):
    return SGDClassifier(loss="log_loss", random_state=0)
"""


def train(base: Path, sample_files: dict[str, Path], model: str, params: dict[str, Any]) -> Path:
    files = [sample_files["signal"], sample_files["background"]]
    workflow = write_workflow(
        base / "workflow", files, [1, 0], params=params, model=model, model_suffix=".py"
    )
    result = run_training(**workflow.kwargs(fout=base / "out" / "higgs"), specs=base / "specs.json")
    return Path(result["bundle"])


def user_module(base: Path) -> Any:
    spec = importlib.util.spec_from_file_location("onnx_test_user_model", base / "workflow" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pytorch_bundle_serves_the_modules_outputs(tmp_path, sample_files):
    import torch

    bundle_path = train(tmp_path, sample_files, TORCH_MODEL, {"training": {"loss": "bce_with_logits"}})
    model = load_onnx_model(read_bundle("higgs", 1, bundle_path))
    assert model.engine == "onnx" and model.input_name == "inputs" and model.output_name == "outputs"
    assert model.n_outputs == 1 and model.features is not None and model.features.dim == model.dim

    # The framework's own outputs: the same architecture with the bundle's trained weights, then the sigmoid
    # the logits loss implies.
    module = user_module(tmp_path).model(model.dim)
    module.load_state_dict(torch.load(bundle_path / "native" / "state_dict.pt"))
    module.eval()
    x = np.random.default_rng(3).random((257, model.dim), dtype=np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(module(torch.from_numpy(x))).numpy()
    got = model.predict(x)
    assert got.dtype == np.float32 and got.shape == (257, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert model.predict(x[:1]).shape == (1, 1)


def test_an_sklearn_bundle_serves_the_estimators_probabilities(tmp_path, sample_files):
    import joblib

    bundle_path = train(tmp_path, sample_files, SGD_MODEL, {})
    model = load_onnx_model(read_bundle("higgs", 1, bundle_path))
    estimator = joblib.load(bundle_path / "native" / "estimator.joblib")
    x = np.random.default_rng(4).random((100, model.dim), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x), estimator.predict_proba(x)[:, 1:2], rtol=1e-5, atol=1e-5)


def test_a_bundle_marked_unservable_is_refused_with_its_reason(tmp_path, sample_files):
    bundle_path = train(tmp_path, sample_files, SGD_MODEL, {"epochs": 1})
    params = json.loads((bundle_path / "params.json").read_text())
    params |= {"servable": False, "unservable_reason": "ONNX outputs differ from the model's by up to 0.1"}
    (bundle_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConflictError, match=r"'higgs' is marked not servable: ONNX outputs differ"):
        load_onnx_model(read_bundle("higgs", 1, bundle_path))
    (bundle_path / "params.json").write_text(json.dumps({**params, "servable": True}))
    (bundle_path / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(BadInputError, match=r"'higgs' is not a loadable ONNX model"):
        load_onnx_model(read_bundle("higgs", 1, bundle_path))
