"""ONNX bundles (PyTorch, scikit-learn and XGBoost models) served by every endpoint like a SavedModel.

All three are trained by appliance.training on generated files and published into one repository; TFaaS runs
under gunicorn with dynamic batching on. Each endpoint gets the payloads a SavedModel gets, and its answer
must equal the framework's own outputs (the native model the bundle keeps beside ``model.onnx``) to 1e-5.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

from appliance.data.features import FeatureSpec
from appliance.training.run import run_training
from tests.tfaas.server import TfaasServer, tfaas_server
from tests.training.conftest import write_workflow
from tfaas import proto

pytestmark = pytest.mark.slow

TORCH_MODEL = """
import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
"""
SKLEARN_MODEL = """
from sklearn.linear_model import LogisticRegression

def model(idim):
    return LogisticRegression(max_iter=200)
"""
XGBOOST_MODEL = """
from xgboost import XGBClassifier

def model(idim):
    return XGBClassifier(n_estimators=10, max_depth=3, random_state=0)
"""
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def train(base: Path, files: list[Path], model: str, name: str, params: dict[str, Any]) -> Path:
    workflow = write_workflow(base / name, files, [1, 0], params=params, model=model, model_suffix=".py")
    result = run_training(**workflow.kwargs(fout=base / "out" / name), publish=base / "models")
    return Path(result["published"])


def torch_outputs(bundle: Path, x: np.ndarray) -> np.ndarray:
    """The trained module itself, with the sigmoid its logits loss implies (what the export appends)."""
    import torch

    namespace: dict[str, Any] = {}
    exec(TORCH_MODEL, namespace)  # the same code the training ran
    module = namespace["model"](x.shape[1])
    module.load_state_dict(torch.load(bundle / "native" / "state_dict.pt", weights_only=True))
    module.eval()
    with torch.no_grad():
        return torch.sigmoid(module(torch.from_numpy(x))).numpy()


def sklearn_outputs(bundle: Path, x: np.ndarray) -> np.ndarray:
    """The estimator's probability of class 1 (a binary bundle's one output column, like a Keras sigmoid)."""
    import joblib

    probabilities = joblib.load(bundle / "native" / "estimator.joblib").predict_proba(x)
    return probabilities[:, 1:].astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_files: dict[str, Path]) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("onnx-serving")
    files = [sample_files["signal"], sample_files["background"]]
    torch_bundle = train(
        base,
        files,
        TORCH_MODEL,
        "alice.torchnet",
        {"epochs": 1, "training": {"loss": "bce_with_logits", "learning_rate": 0.01}},
    )
    sklearn_bundle = train(base, files, SKLEARN_MODEL, "alice.logreg", {"epochs": 1})
    xgboost_bundle = train(base, files, XGBOOST_MODEL, "alice.boosted", {"epochs": 1})
    spec = FeatureSpec.from_dict(json.loads((torch_bundle / "params.json").read_text())["features"])
    with uproot.open(sample_files["signal"]) as handle:
        tree_name = next(k for k, v in handle.classnames().items() if v == "TTree").split(";")[0]
        arrays = handle[tree_name].arrays(spec.input_branches, entry_stop=12)
    raw = {name: arrays[name].tolist() for name in spec.input_branches}
    vectors = spec.transform({n: arrays[n] for n in spec.input_branches}).astype(np.float32)
    # A copy the training marked not servable: listed, but predicting with it answers 409 with the reason.
    refused = base / "models" / "alice.refused" / "1"
    shutil.copytree(torch_bundle, refused)
    params = json.loads((refused / "params.json").read_text())
    params.update(name="alice.refused", servable=False, unservable_reason="ONNX outputs differ by 0.1")
    (refused / "params.json").write_text(json.dumps(params))
    return {
        "base": base,
        "torch_bundle": torch_bundle,
        "raw": raw,
        "vectors": vectors,
        "expected": {
            "alice.torchnet": torch_outputs(torch_bundle, vectors),
            "alice.logreg": sklearn_outputs(sklearn_bundle, vectors),
            "alice.boosted": sklearn_outputs(xgboost_bundle, vectors),
        },
    }


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[TfaasServer]:
    base = trained["base"]
    with tfaas_server(base / "models", base, workers=2, env={"TFAAS_BATCHING": "on"}) as running:
        yield running


MODELS = ["alice.torchnet", "alice.logreg", "alice.boosted"]


@pytest.mark.parametrize("model", MODELS)
def test_original_json_by_values_and_by_raw_branches(server, trained, model) -> None:
    expected = trained["expected"][model]
    by_values = server.post("/json", json={"model": model, "values": trained["vectors"].tolist()})
    assert by_values.status_code == 200, by_values.text
    np.testing.assert_allclose(by_values.json(), expected, **TOLERANCE)
    by_raw = server.post("/json", json={"model": model, "raw": trained["raw"]})
    assert by_raw.status_code == 200, by_raw.text
    np.testing.assert_allclose(by_raw.json(), expected, **TOLERANCE)


@pytest.mark.parametrize("model", MODELS)
def test_original_proto(server, trained, model) -> None:
    vector = trained["vectors"][2]
    row = proto.Row(key=[f"f{i}" for i in range(len(vector))], value=vector.tolist(), model=model)
    headers = {"Content-Type": "application/octet-stream"}
    answer = server.post("/proto", data=row.SerializeToString(), headers=headers)
    assert answer.status_code == 200, answer.text
    predictions = proto.Predictions.FromString(answer.content)
    probabilities = [p.probability for p in predictions.prediction]
    np.testing.assert_allclose(probabilities, trained["expected"][model][2], **TOLERANCE)


@pytest.mark.parametrize("model", MODELS)
def test_tf_serving_rest(server, trained, model) -> None:
    answer = server.post(f"/v1/models/{model}:predict", json={"instances": trained["vectors"].tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], trained["expected"][model], **TOLERANCE)
    status = server.get(f"/v1/models/{model}").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize("model", MODELS)
def test_kserve_v2_json_and_binary(server, trained, model) -> None:
    rows = trained["vectors"]
    expected = trained["expected"][model]
    tensor = {"name": "inputs", "shape": list(rows.shape), "datatype": "FP32"}
    plain = server.post(
        f"/v2/models/{model}/infer", json={"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
    )
    assert plain.status_code == 200, plain.text
    (output,) = plain.json()["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected, **TOLERANCE)

    head = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}],
            "outputs": [{"name": "outputs", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    binary = server.post(
        f"/v2/models/{model}/infer", data=head + rows.astype("<f4").tobytes(), headers=headers
    )
    assert binary.status_code == 200, binary.text
    length = int(binary.headers["Inference-Header-Content-Length"])
    (output,) = json.loads(binary.content[:length])["outputs"]
    values = np.frombuffer(binary.content[length:], dtype="<f4").reshape(output["shape"])
    np.testing.assert_allclose(values, expected, **TOLERANCE)


def test_concurrent_rows_are_batched_and_each_gets_its_own_answer(server, trained) -> None:
    rows = trained["vectors"]
    expected = trained["expected"]["alice.torchnet"]

    def one(i: int) -> list[list[float]]:
        answer = server.post("/json", json={"model": "alice.torchnet", "values": [rows[i].tolist()]})
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, [i % len(rows) for i in range(48)]))
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer, expected[i % len(rows) : i % len(rows) + 1], **TOLERANCE)
    # Only the batcher observes tfaas_batch_rows: ONNX models (the only ones here) went through it.
    samples = dict(
        line.rsplit(" ", 1) for line in server.get("/metrics").text.splitlines() if line[:1] != "#"
    )
    assert float(samples["tfaas_batch_rows_count"]) >= 1


def test_a_bundle_marked_not_servable_is_listed_but_refused_with_its_reason(server, trained) -> None:
    listed = server.get("/models").json()
    assert "alice.refused" in json.dumps(listed)
    for path, body in (
        ("/json", {"model": "alice.refused", "values": trained["vectors"][:1].tolist()}),
        ("/v1/models/alice.refused:predict", {"instances": trained["vectors"][:1].tolist()}),
    ):
        answer = server.post(path, json=body)
        assert answer.status_code == 409, answer.text
        assert answer.json() == {
            "error": "model 'alice.refused' is marked not servable: ONNX outputs differ by 0.1",
            "status": 409,
        }


def eventually(answer: Callable[[], Any], status: int, timeout: float = 20.0) -> Any:
    """The first answer with ``status``: two workers each rescan the repository on their own interval."""
    deadline = time.monotonic() + timeout
    while (response := answer()).status_code != status:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    return response


def renamed_copy(bundle: Path, name: str, where: Path, **changes: Any) -> Path:
    """A copy of ``bundle`` in a folder called ``name`` whose params.json names it so."""
    copy = where / name
    shutil.copytree(bundle, copy)
    params = json.loads((copy / "params.json").read_text())
    (copy / "params.json").write_text(json.dumps({**params, "name": name, **changes}))
    return copy


def gzipped_tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname=directory.name)
    return buffer.getvalue()


def test_onnx_bundles_upload_as_a_tar_and_as_a_lone_model_file(server, trained, tmp_path) -> None:
    rows, expected = trained["vectors"], trained["expected"]["alice.torchnet"]
    source = renamed_copy(trained["torch_bundle"], "local.onnxtar", tmp_path)
    uploaded = server.post("/upload", data=gzipped_tar(source), headers={"Content-Type": "application/gzip"})
    assert uploaded.status_code == 201, uploaded.text
    answer = eventually(
        lambda: server.post("/json", json={"model": "local.onnxtar", "values": rows.tolist()}), 200
    )
    np.testing.assert_allclose(answer.json(), expected, **TOLERANCE)

    params = json.loads((source / "params.json").read_text()) | {"name": "local.onnxform"}
    form = server.post(
        "/upload",
        data={"name": "local.onnxform"},
        files={
            "params": ("params.json", json.dumps(params)),
            "model": ("model.onnx", (source / "model.onnx").read_bytes()),
        },
    )
    assert form.status_code == 201, form.text
    body = {"instances": rows.tolist()}
    answer = eventually(lambda: server.post("/v1/models/local.onnxform:predict", json=body), 200)
    np.testing.assert_allclose(answer.json()["predictions"], expected, **TOLERANCE)


def test_an_unservable_or_mislabelled_onnx_upload_is_refused(server, trained, tmp_path) -> None:
    refused = renamed_copy(
        trained["torch_bundle"], "local.unservable", tmp_path, servable=False, unservable_reason="too far"
    )
    answer = server.post("/upload", data=gzipped_tar(refused), headers={"Content-Type": "application/gzip"})
    assert answer.status_code == 400, answer.text
    assert "marked not servable, so it is not accepted: too far" in answer.json()["error"]
    keras_runtime = renamed_copy(trained["torch_bundle"], "local.noruntime", tmp_path, runtime="tensorflow")
    answer = server.post(
        "/upload", data=gzipped_tar(keras_runtime), headers={"Content-Type": "application/gzip"}
    )
    assert answer.status_code == 400, answer.text
    assert "the bundle has no saved_model.pb" in answer.json()["error"]
    assert server.get("/params/local.unservable").status_code == 404


def test_an_original_style_onnx_bundle_is_served_and_deleted(server, trained) -> None:
    # Dropped in by hand beside the versioned ones: its files are the model folder itself.
    staged = renamed_copy(trained["torch_bundle"], ".staged-local.byhand", server.repo)
    params = json.loads((staged / "params.json").read_text()) | {"name": "local.byhand"}
    (staged / "params.json").write_text(json.dumps(params))
    staged.rename(server.repo / "local.byhand")
    rows = trained["vectors"][:3].tolist()
    answer = eventually(lambda: server.post("/json", json={"model": "local.byhand", "values": rows}), 200)
    np.testing.assert_allclose(answer.json(), trained["expected"]["alice.torchnet"][:3], **TOLERANCE)
    deleted = server.delete("/delete/local.byhand")
    assert deleted.status_code == 200 and deleted.json()["versions"] == [1], deleted.text
    assert not (server.repo / "local.byhand" / "model.onnx").exists()
    eventually(lambda: server.post("/json", json={"model": "local.byhand", "values": rows}), 404)
