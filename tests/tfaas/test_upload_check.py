"""The upload check runs in a child process (``tfaas.upload_check``), off the request worker.

The worker's other requests are answered while a real, large bundle is being checked: the check is seen
running in its own process, and a ``/json`` request sent meanwhile answers before that process is done. The
NumPy engine's graph is handed over by pickling, giving the very numbers of the graph compiled in the worker.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from servicecore.errors import BadInputError
from tests.tfaas import bundles
from tests.tfaas.conftest import populate
from tests.tfaas.server import tfaas_server
from tfaas.predictor import load_model
from tfaas.repository import read_bundle
from tfaas.upload_check import check_in_child

ROW = [0.3, -1.2, 2.0, 0.7]


def test_a_compiled_graph_pickles_to_the_same_numbers(tmp_path: Path) -> None:
    # Every kind of step: MatMul, in-place BiasAdd and activations, and LeakyRelu's partial.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    for activation in ("relu", "tanh", "sigmoid", "leaky_relu", "elu"):
        path = bundles.write_bundle(
            tmp_path / activation, bundles.mlp(6, (16, 8), 3, activation=activation), activation, 6, []
        )
        model = load_model(read_bundle(activation, 1, path))
        assert model.engine == "numpy" and model.graph is not None, activation
        copy = pickle.loads(pickle.dumps(model.graph))
        assert np.array_equal(copy(x.copy()), model.graph(x.copy())), activation
        assert np.allclose(copy(x.copy()), bundles.reference_predict(path, x), rtol=1e-4, atol=1e-5)


def test_the_child_hands_over_a_numpy_model_and_only_a_verdict_otherwise(
    bundle_sources: dict[str, Path],
) -> None:
    numpy_model = check_in_child(read_bundle("small", 1, bundle_sources["small_v1"]), True, 1, 120)
    assert numpy_model.engine == "numpy" and numpy_model.graph is not None
    x = np.array([ROW], dtype=np.float32)
    expected = bundles.reference_predict(bundle_sources["small_v1"], x)
    assert np.allclose(numpy_model.graph(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="checked in another process"):
        numpy_model.run(x)  # no TensorFlow function came across
    tf_model = check_in_child(read_bundle("tfonly", 1, bundle_sources["tfonly"]), True, 1, 120)
    assert tf_model.engine == "tensorflow" and tf_model.graph is None
    # With several TensorFlow threads large batches go to TensorFlow: the worker must load the model itself.
    threaded = check_in_child(read_bundle("small", 1, bundle_sources["small_v1"]), True, 2, 120)
    assert threaded.engine == "numpy" and threaded.graph is None


def test_the_child_refuses_what_cannot_be_served(tmp_path: Path, bundle_sources: dict[str, Path]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (broken / "params.json").write_text("{}")
    with pytest.raises(BadInputError, match="'broken' is not a loadable SavedModel"):
        check_in_child(read_bundle("broken", 0, broken), True, 1, 120)
    misfit = tmp_path / "misfit"
    (misfit / "variables").mkdir(parents=True)
    for source in bundle_sources["raw"].rglob("*"):
        if source.is_file():
            (misfit / source.relative_to(bundle_sources["raw"])).write_bytes(source.read_bytes())
    spec = read_bundle("misfit", 0, misfit).params
    spec["features"]["flat"].append({"name": "HT", "kind": "flat", "min": 0.0, "max": 1.0})
    (misfit / "params.json").write_text(json.dumps(spec))
    with pytest.raises(BadInputError, match="feature spec gives 4 columns"):
        check_in_child(read_bundle("misfit", 0, misfit), True, 1, 120)


def _tar(bundle: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(bundle, arcname=name)
    return buffer.getvalue()


def _checkers(worker: psutil.Process) -> list[psutil.Process]:
    """The worker's check processes: children of its fork server (itself a child of the worker)."""
    return [grandchild for child in worker.children() for grandchild in child.children()]


@pytest.mark.slow
def test_the_worker_answers_while_it_checks_a_large_upload(
    tmp_path: Path, bundle_sources: dict[str, Path]
) -> None:
    # 8.5 million weights: loading, freezing and checking them takes seconds, in the checking process.
    large = bundles.write_bundle(
        tmp_path / "large", bundles.mlp(4, (2048, 2048, 2048), 1), "local.large", 4, ["signal"]
    )
    repo = populate(tmp_path / "models", bundle_sources)
    with tfaas_server(repo, tmp_path, workers=1) as server:  # one worker: the upload's is the /json's
        server.warm("small")
        worker = psutil.Process(server.get("/status").json()["pid"])
        upload: dict[str, object] = {}

        def send_upload() -> None:
            upload["response"] = server.post(
                "/upload?name=local.large", data=_tar(large, "local.large"),
                headers={"Content-Type": "application/x-tar"},
            )  # fmt: skip

        uploading = threading.Thread(target=send_upload)
        uploading.start()
        deadline = time.monotonic() + 120
        while not _checkers(worker):
            assert uploading.is_alive() and time.monotonic() < deadline, "no check process was seen"
            time.sleep(0.01)
        (checker,) = _checkers(worker)
        answered_during_check = 0
        while checker.is_running() and checker.status() != psutil.STATUS_ZOMBIE:
            response = server.post("/json", json={"model": "small", "values": ROW})
            assert response.status_code == 200, response.text
            if checker.is_running() and checker.status() != psutil.STATUS_ZOMBIE:
                answered_during_check += 1
        uploading.join(120)
        assert upload["response"].status_code == 201, upload["response"].text
        assert answered_during_check >= 1
        # The upload is served at once by the worker that took it, from the graph the check handed over.
        prediction = server.post("/json", json={"model": "local.large", "values": ROW})
        expected = bundles.reference_predict(large, np.array([ROW], dtype=np.float32))[0]
        assert np.allclose(prediction.json(), expected, rtol=1e-4, atol=1e-5)
