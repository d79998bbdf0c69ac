"""Batch inference of the bundles that hold a ``model.onnx`` (PyTorch, scikit-learn, XGBoost): the friend
trees' scores equal TFaaS's ONNX engine's for the same events, and a bundle the training marked not servable
is refused with its reason, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import uproot

from appliance.data.features import FeatureSpec
from appliance.inference.predict import PredictOptions, run_predict
from appliance.training.run import run_training
from servicecore.errors import BadInputError
from tests.training.conftest import write_workflow

pytestmark = pytest.mark.slow

SGD_MODEL = """
from sklearn.linear_model import SGDClassifier

def model(idim):
    return SGDClassifier(loss="log_loss", random_state=0)
"""
THREADS = PredictOptions(workers=2, task_entries=1100, step=400)


@pytest.fixture(scope="module")
def onnx_bundle(sample_files, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("onnx-predict")
    files = [sample_files["signal"], sample_files["background"]]
    workflow = write_workflow(base / "workflow", files, [1, 0], model=SGD_MODEL, model_suffix=".py")
    result = run_training(**workflow.kwargs(fout=base / "out" / "alice.sgd"), publish=base / "models")
    return Path(result["published"])


def test_an_onnx_bundle_scores_as_tfaas_onnx_engine(onnx_bundle, sample_files, tmp_path):
    from tfaas.onnx_model import load_onnx_model
    from tfaas.repository import read_bundle

    params = json.loads((onnx_bundle / "params.json").read_text())
    assert params["model"] == "model.onnx" and not (onnx_bundle / "saved_model.pb").exists()
    files = [str(sample_files["signal"]), str(sample_files["background"])]
    summary = run_predict(files, onnx_bundle, tmp_path / "friends", THREADS)
    assert summary["events"] == 8000
    spec = FeatureSpec.from_dict(params["features"])
    served = load_onnx_model(read_bundle("alice.sgd", 1, onnx_bundle))
    for name in ("signal", "background"):
        with uproot.open(sample_files[name]) as handle:
            arrays = handle["Events"].arrays(spec.input_branches, library="ak")
        expected = served.predict(spec.transform({n: arrays[n] for n in spec.input_branches}))
        with uproot.open(tmp_path / "friends" / f"{name}_scores.root") as handle:
            friend = handle["scores"].arrays(library="np")
        scores = np.stack([friend[n] for n in summary["branches"] if n.startswith("score_")], axis=1)
        assert len(friend["entry"]) == len(arrays) and friend["passed"].all()
        np.testing.assert_allclose(scores, np.asarray(expected).reshape(scores.shape), rtol=1e-5, atol=1e-6)


def test_a_bundle_marked_not_servable_is_refused_with_its_reason(onnx_bundle, sample_files, tmp_path):
    broken = tmp_path / "unservable"
    shutil.copytree(onnx_bundle, broken)
    (broken / "model.onnx").unlink()
    params = json.loads((broken / "params.json").read_text())
    reason = "no ONNX converter for HomeMadeClassifier"
    (broken / "params.json").write_text(
        json.dumps({**params, "servable": False, "unservable_reason": reason})
    )
    with pytest.raises(BadInputError, match=f"marked it not servable \\({reason}\\)"):
        run_predict([str(sample_files["signal"])], broken, tmp_path / "out", THREADS)
    assert not (tmp_path / "out").exists()
