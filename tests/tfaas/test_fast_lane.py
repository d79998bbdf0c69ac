"""The fast lane of every protocol answers exactly as the Flask views, the reference, do.

Under gunicorn, each request is sent twice: with a Content-Length, which the lane may answer, and chunked
(no Content-Length), which the lane always hands to the Flask view. Status, content type and body must be
byte for byte the same, for good requests and bad ones. In-process, a hook in Flask tells which requests the
lane answered, so the comparison is known to compare the lane with the view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import flask
import numpy as np
import pytest

from tests.tfaas.server import TfaasServer
from tfaas.api import create_app
from tfaas.fast_json import SMALL_BODY_BYTES
from tfaas.settings import Settings

RNG = np.random.default_rng(21)
ROWS = RNG.normal(size=(5, 4)).round(5)
BATCH = RNG.normal(size=(400, 4))  # a body above SMALL_BODY_BYTES: the simdjson decoders
INTEGERS = RNG.integers(-50, 50, size=(2000, 4))  # large enough for simdjson too
PAD = "x" * SMALL_BODY_BYTES
BINARY = "Inference-Header-Content-Length"


def v2(data: object, shape: list[int], datatype: str = "FP32", name: str = "inputs", **extra: object) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def binary_request(rows: np.ndarray, binary_output: bool) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "inputs", "shape": list(rows.shape), "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": rows.astype("<f4").nbytes}
    header = {"inputs": [tensor], "parameters": {"binary_data_output": binary_output}}
    head = json.dumps(header).encode()
    headers = {BINARY: str(len(head)), "Content-Type": "application/octet-stream"}
    return head + rows.astype("<f4").tobytes(), headers


JSON = "application/json"
# (case, path, body, content type, whether the lane answers it)
CASES: list[tuple[str, str, object, str, bool]] = [
    # the original API
    (
        "json one row",
        "/json",
        {"model": "small", "values": ROWS[0].tolist(), "keys": list("abcd")},
        JSON,
        True,
    ),
    ("json batch", "/json", {"model": "small", "values": ROWS.tolist()}, JSON, True),
    ("json large batch", "/json", {"model": "small", "values": BATCH.tolist(), "version": 1}, JSON, True),
    ("json integers", "/json", {"model": "small", "values": INTEGERS.tolist()}, JSON, True),
    (
        "json curl type",
        "/json",
        {"model": "small", "values": ROWS.tolist()},
        "application/x-www-form-urlencoded",
        True,
    ),
    ("json tensorflow model", "/json", {"model": "tfonly", "values": BATCH.tolist()}, JSON, True),
    (
        "json raw",
        "/json",
        {"model": "alice.raw", "raw": {"MET_pt": [5.0, 7.5], "Jet_pt": [[1.0], []]}},
        JSON,
        True,
    ),
    ("json unknown model", "/json", {"model": "nope", "values": ROWS[0].tolist()}, JSON, False),
    (
        "json bad version",
        "/json",
        {"model": "small", "version": "x", "values": ROWS[0].tolist()},
        JSON,
        False,
    ),
    ("json short row", "/json", {"model": "small", "values": [1, 2, 3]}, JSON, False),
    ("json large ragged", "/json", {"model": "small", "values": [*BATCH.tolist(), [1.0]]}, JSON, False),
    (
        "json large strings",
        "/json",
        {"model": "small", "values": [*BATCH.tolist(), ["1", 2, 3, 4]]},
        JSON,
        False,
    ),
    ("json overflow", "/json", {"model": "small", "values": [1e39, 0, 0, 0]}, JSON, False),
    ("json xml", "/json", {"model": "small", "values": [1, 2, 3, 4]}, "application/xml", False),
    # TF Serving REST
    ("tf instances", "/v1/models/small:predict", {"instances": ROWS.tolist()}, JSON, True),
    ("tf large instances", "/v1/models/small/versions/1:predict", {"instances": BATCH.tolist()}, JSON, True),
    (
        "tf large inputs",
        "/v1/models/tfonly:predict",
        {"inputs": BATCH.tolist(), "signature_name": "serving_default"},
        JSON,
        True,
    ),
    ("tf named inputs", "/v1/models/small:predict", {"inputs": {"inputs": ROWS.tolist()}}, JSON, True),
    (
        "tf named instances",
        "/v1/models/small:predict",
        {"instances": [{"inputs": r} for r in ROWS.tolist()]},
        JSON,
        True,
    ),
    (
        "tf raw events",
        "/v1/models/alice.raw:predict",
        {"instances": [{"MET_pt": 1.0, "Jet_pt": [2.0]}]},
        JSON,
        True,
    ),
    (
        "tf +json type",
        "/v1/models/small:predict",
        {"instances": ROWS.tolist()},
        "application/vnd.tfaas+json",
        True,
    ),
    (
        "tf flat instances",
        "/v1/models/small:predict",
        {"instances": BATCH[0].tolist(), "pad": PAD},
        JSON,
        False,
    ),
    (
        "tf both keys",
        "/v1/models/small:predict",
        {"instances": ROWS.tolist(), "inputs": ROWS.tolist()},
        JSON,
        False,
    ),
    (
        "tf signature",
        "/v1/models/small:predict",
        {"signature_name": "x", "instances": BATCH.tolist()},
        JSON,
        False,
    ),
    ("tf unknown", "/v1/models/nope:predict", {"instances": ROWS.tolist()}, JSON, False),
    ("tf bad version", "/v1/models/small/versions/x:predict", {"instances": ROWS.tolist()}, JSON, False),
    (
        "tf form type",
        "/v1/models/small:predict",
        {"instances": ROWS.tolist()},
        "application/x-www-form-urlencoded",
        False,
    ),
    # KServe v2 JSON
    ("v2 small", "/v2/models/small/infer", v2(ROWS.ravel().tolist(), [5, 4], id="r1"), JSON, True),
    (
        "v2 large flat",
        "/v2/models/small/infer",
        v2(BATCH.ravel().tolist(), [400, 4], outputs=[{"name": "outputs"}]),
        JSON,
        True,
    ),
    ("v2 large nested", "/v2/models/small/versions/1/infer", v2(BATCH.tolist(), [400, 4]), JSON, True),
    (
        "v2 large integers",
        "/v2/models/small/infer",
        v2(INTEGERS.ravel().tolist(), [2000, 4], "INT64"),
        JSON,
        True,
    ),
    (
        "v2 binary output",
        "/v2/models/small/infer",
        v2(BATCH.ravel().tolist(), [400, 4], parameters={"binary_data_output": True}),
        JSON,
        True,
    ),
    ("v2 raw branch", "/v2/models/alice.raw/infer", v2([5.0], [1], name="MET_pt"), JSON, False),
    ("v2 shape mismatch", "/v2/models/small/infer", v2(BATCH.ravel().tolist(), [401, 4]), JSON, False),
    ("v2 bad datatype", "/v2/models/small/infer", v2(BATCH.ravel().tolist(), [400, 4], "BYTES"), JSON, False),
    ("v2 ragged", "/v2/models/small/infer", v2([*BATCH.tolist(), [1.0]], [401, 4]), JSON, False),
    (
        "v2 output name",
        "/v2/models/small/infer",
        v2(BATCH.ravel().tolist(), [400, 4], outputs=[{"name": "p"}]),
        JSON,
        False,
    ),
    (
        "v2 unknown version",
        "/v2/models/small/versions/3/infer",
        v2(ROWS.ravel().tolist(), [5, 4]),
        JSON,
        False,
    ),
    ("v2 png", "/v2/models/small/infer", v2(ROWS.ravel().tolist(), [5, 4]), "image/png", False),
]


def encode(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def chunked(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(("case", "path", "body", "content_type", "lane"), CASES, ids=[c[0] for c in CASES])
def test_the_lane_answers_as_the_reference_view(
    server: TfaasServer, case: str, path: str, body: object, content_type: str, lane: bool
) -> None:
    data, headers = encode(body), {"Content-Type": content_type}
    fast = server.post(path, data=data, headers=headers)
    reference = server.post(path, data=chunked(data), headers=headers)
    assert reference.request.headers.get("Transfer-Encoding") == "chunked"
    assert (fast.status_code, fast.headers["Content-Type"]) == (
        reference.status_code,
        reference.headers["Content-Type"],
    )
    assert fast.content == reference.content
    assert fast.headers.get(BINARY) == reference.headers.get(BINARY)
    assert (fast.status_code == 200) == lane, fast.text


@pytest.mark.parametrize("binary_output", [False, True])
def test_binary_tensors_through_the_lane_and_the_view(server: TfaasServer, binary_output: bool) -> None:
    data, headers = binary_request(BATCH, binary_output)
    fast = server.post("/v2/models/small/infer", data=data, headers=headers)
    reference = server.post("/v2/models/small/infer", data=chunked(data), headers=headers)
    assert fast.status_code == reference.status_code == 200, fast.text
    assert fast.content == reference.content
    assert fast.headers.get(BINARY) == reference.headers.get(BINARY)
    assert fast.headers["Content-Type"] == reference.headers["Content-Type"]


# -- in-process: which requests the lane answers --


@pytest.fixture(scope="module")
def app_and_views(tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path]) -> tuple:
    from tests.tfaas.conftest import populate

    repo = populate(tmp_path_factory.mktemp("lane") / "models", bundle_sources)
    app = create_app(Settings(model_dir=repo, preload=False))
    views: list[str] = []

    @app.before_request
    def seen_by_flask() -> None:
        views.append(flask.request.path)

    return app, views


@pytest.mark.parametrize(("case", "path", "body", "content_type", "lane"), CASES, ids=[c[0] for c in CASES])
def test_the_lane_answers_only_what_succeeds(
    app_and_views: tuple, case: str, path: str, body: object, content_type: str, lane: bool
) -> None:
    app, views = app_and_views
    client = app.test_client()
    before = len(views)
    response = client.post(path, data=encode(body), headers={"Content-Type": content_type})
    answered_by_flask = len(views) > before
    assert answered_by_flask != lane, (case, response.status_code, response.get_data(as_text=True))
    assert (response.status_code == 200) == lane


def test_binary_tensors_are_answered_by_the_lane(app_and_views: tuple) -> None:
    app, views = app_and_views
    before = len(views)
    data, headers = binary_request(ROWS, True)
    response = app.test_client().post("/v2/models/small/infer", data=data, headers=headers)
    assert response.status_code == 200 and len(views) == before
    length = int(response.headers[BINARY])
    assert np.frombuffer(response.get_data()[length:], dtype="<f4").shape == (10,)
