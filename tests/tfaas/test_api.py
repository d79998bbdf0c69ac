"""Every API of TFaaS under real gunicorn, with the numbers checked against the SavedModel itself."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.tfaas.bundles import reference_predict
from tests.tfaas.server import TfaasServer
from tfaas import proto
from tfaas.fast_json import SMALL_BODY_BYTES

RNG = np.random.default_rng(7)
ROWS4 = RNG.normal(size=(5, 4)).round(4)


def close(got: object, expected: np.ndarray) -> bool:
    return np.allclose(np.asarray(got, dtype=np.float64), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def expected(bundle_sources: dict[str, Path]) -> dict[str, np.ndarray]:
    return {
        "small": reference_predict(bundle_sources["small_v1"], ROWS4),
        "tfonly": reference_predict(bundle_sources["tfonly"], ROWS4),
        "legacy": reference_predict(bundle_sources["legacy"], ROWS4[:, :3]),
    }


# -- the original TFaaS API --


@pytest.mark.parametrize("path", ["/json", "/predict/json"])
def test_json_single_row_answers_a_bare_list(server: TfaasServer, expected: dict, path: str) -> None:
    body = {"keys": ["a", "b", "c", "d"], "values": ROWS4[0].tolist(), "model": "small"}
    response = server.post(path, json=body)
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), list) and len(response.json()) == 2
    assert close(response.json(), expected["small"][0])


@pytest.mark.parametrize("model", ["small", "tfonly"])
def test_json_batch_of_rows(server: TfaasServer, expected: dict, model: str) -> None:
    response = server.post("/json", json={"values": ROWS4.tolist(), "model": model})
    assert response.status_code == 200, response.text
    assert close(response.json(), expected[model])


def test_large_batch_matches_row_by_row(server: TfaasServer, bundle_sources: dict[str, Path]) -> None:
    rows = RNG.normal(size=(300, 4)).astype(np.float32)
    response = server.post("/json", json={"values": rows.tolist(), "model": "small"})
    assert response.status_code == 200, response.text
    assert close(response.json(), reference_predict(bundle_sources["small_v1"], rows))


def test_original_style_bundle_with_old_keys_is_version_1(server: TfaasServer, expected: dict) -> None:
    response = server.post("/json", json={"values": ROWS4[0, :3].tolist(), "model": "legacy"})
    assert close(response.json(), expected["legacy"][0])
    assert server.get("/params/legacy").json()["version"] == 1
    assert server.get("/v1/models/legacy").json()["model_version_status"][0]["version"] == "1"


def test_the_posters_curl_call_works_unchanged(server: TfaasServer, expected: dict, tmp_path: Path) -> None:
    """curl -H "Authorization: Bearer $TOKEN" -X POST -H "Content-type: application/json" -d @predict.json"""
    (tmp_path / "predict.json").write_text(
        json.dumps({"keys": ["x0", "x1", "x2", "x3"], "values": ROWS4[1].tolist(), "model": "small"})
    )
    command = (
        'curl -s -H "Authorization: Bearer $TOKEN" -X POST -H "Content-type: application/json" '
        f"-d @predict.json {server.url}/json"
    )
    out = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, check=True, env={"TOKEN": "t0k3n"}
    )
    assert close(json.loads(out.stdout), expected["small"][1])
    # and curl's default content type (form-urlencoded), which the Go server accepted too
    plain = subprocess.run(
        ["curl", "-s", "-d", "@predict.json", f"{server.url}/json"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    assert close(json.loads(plain.stdout), expected["small"][1])


@pytest.mark.parametrize("path", ["/proto", "/predict/proto"])
def test_proto_row_gives_labelled_predictions(server: TfaasServer, expected: dict, path: str) -> None:
    row = proto.Row(key=["a", "b", "c", "d"], value=ROWS4[2].tolist(), model="small")
    response = server.post(
        path, data=row.SerializeToString(), headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    predictions = proto.Predictions.FromString(response.content)
    assert [p.label for p in predictions.prediction] == ["a", "b"]
    assert close([p.probability for p in predictions.prediction], expected["small"][2])


def test_models_and_params(server: TfaasServer) -> None:
    listing = {m["name"]: m for m in server.get("/models").json()}
    assert set(listing) == {"small", "legacy", "tfonly", "alice.raw"}
    assert listing["small"]["versions"] == [1]
    assert listing["legacy"]["inputNode"] == "inputs"
    params = server.get("/params/alice.raw").json()
    assert params["name"] == "alice.raw" and params["features"]["flat"][0]["name"] == "MET_pt"


def test_status_is_public_host_information(server: TfaasServer) -> None:
    status = server.get("/status").json()
    assert status["status"] == "ok" and status["models"] == 4 and status["cpu_count"] >= 1


# -- raw branch values through the bundle's feature spec --


def test_raw_columns_and_events_are_normalised_by_the_bundles_spec(
    server: TfaasServer, bundle_sources: dict[str, Path]
) -> None:
    # MET_pt min-max over [0, 100]; Jet_pt over [0, 200] padded to 2 slots with 0
    vectors = np.array([[0.5, 0.5, 0.1], [0.1, 0.0, 0.0], [1.0, 1.0, 0.25]], dtype=np.float32)
    want = reference_predict(bundle_sources["raw"], vectors)
    raw = {"MET_pt": [50.0, 10.0, 100.0], "Jet_pt": [[100.0, 20.0], [], [200.0, 50.0, 7.0]]}
    by_columns = server.post("/json", json={"model": "alice.raw", "raw": raw})
    assert by_columns.status_code == 200, by_columns.text
    assert close(by_columns.json(), want)
    events = [{"MET_pt": m, "Jet_pt": j} for m, j in zip(raw["MET_pt"], raw["Jet_pt"], strict=True)]
    assert close(server.post("/json", json={"model": "alice.raw", "events": events}).json(), want)
    tf_serving = server.post("/v1/models/alice.raw:predict", json={"instances": events})
    assert close(tf_serving.json()["predictions"], want)
    assert close(server.post("/json", json={"model": "alice.raw", "values": vectors.tolist()}).json(), want)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"raw": {"MET_pt": [1.0]}}, "lack the branches"),
        ({"raw": {"MET_pt": [1.0, 2.0], "Jet_pt": [[1.0]]}}, "different numbers of events"),
        ({"raw": {"MET_pt": ["high"], "Jet_pt": [[1.0]]}}, "MET_pt"),
        ({"raw": {"MET_pt": [], "Jet_pt": []}}, "no events"),
        ({"events": []}, "non-empty list"),
    ],
)
def test_bad_raw_values(server: TfaasServer, body: dict, message: str) -> None:
    response = server.post("/json", json={"model": "alice.raw", **body})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_raw_values_need_a_spec(server: TfaasServer) -> None:
    response = server.post("/json", json={"model": "small", "raw": {"x": [1.0]}})
    assert response.status_code == 400 and "no feature spec" in response.json()["error"]


# -- TF Serving REST --


def test_tf_serving_instances_and_inputs(server: TfaasServer, expected: dict) -> None:
    instances = server.post("/v1/models/small:predict", json={"instances": ROWS4.tolist()})
    assert instances.status_code == 200, instances.text
    assert close(instances.json()["predictions"], expected["small"])
    named = server.post(
        "/v1/models/small/versions/1:predict", json={"instances": [{"inputs": r} for r in ROWS4.tolist()]}
    )
    assert close(named.json()["predictions"], expected["small"])
    columnar = server.post("/v1/models/tfonly:predict", json={"inputs": {"inputs": ROWS4.tolist()}})
    assert close(columnar.json()["outputs"], expected["tfonly"])
    plain = server.post(
        "/v1/models/tfonly:predict", json={"signature_name": "serving_default", "inputs": ROWS4.tolist()}
    )
    assert close(plain.json()["outputs"], expected["tfonly"])


def test_tf_serving_status_and_metadata(server: TfaasServer) -> None:
    status = server.get("/v1/models/small").json()
    assert status == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    metadata = server.get("/v1/models/small/metadata").json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in signature["inputs"]["inputs"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert server.get("/v1/models/small/versions/7").status_code == 404


# -- KServe v2 --


def test_kserve_v2_infer(server: TfaasServer, expected: dict) -> None:
    body = {
        "id": "req-1",
        "inputs": [{"name": "inputs", "shape": [5, 4], "datatype": "FP32", "data": ROWS4.ravel().tolist()}],
        "outputs": [{"name": "outputs"}],
    }
    response = server.post("/v2/models/small/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-1" and answer["model_name"] == "small" and answer["model_version"] == "1"
    (output,) = answer["outputs"]
    assert output["name"] == "outputs" and output["shape"] == [5, 2] and output["datatype"] == "FP32"
    assert close(np.reshape(output["data"], output["shape"]), expected["small"])
    nested = dict(body, inputs=[dict(body["inputs"][0], data=ROWS4.tolist())])
    assert close(
        np.reshape(server.post("/v2/models/small/infer", json=nested).json()["outputs"][0]["data"], (5, 2)),
        expected["small"],
    )


def test_kserve_v2_raw_flat_branches_are_refused_for_jagged_specs(server: TfaasServer) -> None:
    body = {"inputs": [{"name": "MET_pt", "shape": [1], "datatype": "FP32", "data": [5.0]}]}
    response = server.post("/v2/models/alice.raw/infer", json=body)
    assert response.status_code == 400 and "Jet_pt" in response.json()["error"]


def test_kserve_health_and_metadata(server: TfaasServer) -> None:
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    assert server.get("/v2").json()["name"] == "tfaas"
    metadata = server.get("/v2/models/small").json()
    assert metadata["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "outputs", "datatype": "FP32", "shape": [-1, 2]}]
    assert server.get("/v2/models/small/ready").json()["ready"] is True
    assert server.get("/v2/models/unknown/ready").status_code == 404


# -- bad input: a JSON error with the right 4xx, never a 500 or a traceback --

ROW = [1, 2, 3, 4]


def v2(shape: list[int], datatype: str, data: list, **extra: object) -> dict:
    return {"inputs": [{"name": "inputs", "shape": shape, "datatype": datatype, "data": data}], **extra}


BAD_JSON = [
    ("unknown model", "/json", {"model": "nope", "values": ROW}, 404, "does not exist"),
    ("unknown version", "/json", {"model": "small", "version": 9, "values": ROW}, 404, "no version 9"),
    ("bad version", "/json", {"model": "small", "version": "x", "values": ROW}, 400, "version"),
    ("no model", "/json", {"values": ROW}, 400, "which model"),
    ("too few features", "/json", {"model": "small", "values": [1, 2, 3]}, 400, "expects 4 features"),
    ("ragged batch", "/json", {"model": "small", "values": [ROW, [1, 2]]}, 400, "4 numbers"),
    ("strings", "/json", {"model": "small", "values": [1, "2", 3, 4]}, 400, "only numbers"),
    ("booleans", "/json", {"model": "small", "values": [True, False, True, True]}, 400, "only numbers"),
    ("nested objects", "/json", {"model": "small", "values": [{"a": 1}]}, 400, "numbers"),
    ("empty batch", "/json", {"model": "small", "values": []}, 400, "empty"),
    ("overflow", "/json", {"model": "small", "values": [1e39, 0, 0, 0]}, 400, "finite"),
    ("two inputs", "/json", {"model": "small", "values": ROW, "raw": {}}, 400, "exactly one"),
    ("tf no instances", "/v1/models/small:predict", {"rows": []}, 400, "exactly one"),
    ("tf signature", "/v1/models/small:predict", {"signature_name": "x", "instances": [ROW]}, 400, "no sig"),
    ("tf unknown model", "/v1/models/nope:predict", {"instances": [ROW]}, 404, "does not exist"),
    ("tf flat instances", "/v1/models/small:predict", {"instances": ROW}, 400, "list of rows"),
    ("v2 bad datatype", "/v2/models/small/infer", v2([1, 4], "BYTES", ["a"] * 4), 400, "datatype"),
    ("v2 shape mismatch", "/v2/models/small/infer", v2([2, 4], "FP32", ROW), 400, "8 numbers"),
    ("v2 output", "/v2/models/small/infer", v2([1, 4], "FP32", ROW, outputs=[{"name": "p"}]), 400, "one out"),
    ("v2 unknown version", "/v2/models/small/versions/3/infer", {"inputs": []}, 404, "no version 3"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "message"), BAD_JSON, ids=[c[0] for c in BAD_JSON]
)
def test_bad_json_requests(
    server: TfaasServer, case: str, path: str, body: dict, status: int, message: str
) -> None:
    response = server.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()) == {"error", "status"} and response.json()["status"] == status
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


LARGE_BAD_JSON = [case for case in BAD_JSON if case[1] == "/json"] + [
    ("nested rows", "/json", {"model": "small", "values": [[1, 2, 3, [4]], ROW]}, 400, "numbers"),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "message"), LARGE_BAD_JSON, ids=[c[0] for c in LARGE_BAD_JSON]
)
def test_large_bad_json_requests(
    server: TfaasServer, case: str, path: str, body: dict, status: int, message: str
) -> None:
    """The same answers when the body is large enough for the fast lane's simdjson decoder."""
    response = server.post(path, json={**body, "comment": "x" * SMALL_BODY_BYTES})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "data", "content_type", "status", "message"),
    [
        ("/json", b'{"model": "small", "values": [1, 2, 3, NaN]}', "application/json", 400, "not valid JSON"),
        ("/json", b'{"model": "small", "values": [1, 2,', "application/json", 400, "not valid JSON"),
        ("/json", b"\xff\xfe", "application/json", 400, "not valid JSON"),
        ("/json", b"[1, 2, 3, 4]", "application/json", 400, "JSON object"),
        ("/json", b"<row/>", "application/xml", 415, "content type"),
        ("/v2/models/small/infer", b"{}", "image/png", 415, "content type"),
        ("/proto", b"\xff\xff\xff\xff", "application/octet-stream", 400, "tfaaspb.Row"),
        ("/proto", b"{}", "application/json", 415, "content type"),
        ("/json", b'{"values": [' + b"1.0, " * 60000 + b"1.0]}", "application/json", 413, "large"),
    ],
    ids=["nan", "truncated", "binary", "array", "xml", "png", "bad-proto", "json-to-proto", "oversized"],
)
def test_bad_bodies(
    server: TfaasServer, path: str, data: bytes, content_type: str, status: int, message: str
) -> None:
    response = server.post(path, data=data, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json() == {"error": response.json()["error"], "status": status}
    assert message in response.json()["error"]


def test_proto_errors(server: TfaasServer) -> None:
    unknown = proto.Row(value=[1, 2, 3, 4], model="nope").SerializeToString()
    assert server.post("/proto", data=unknown).status_code == 404
    short = proto.Row(value=[1, 2, 3], model="small").SerializeToString()
    response = server.post("/proto", data=short)
    assert response.status_code == 400 and "expects 4 features" in response.json()["error"]
    assert server.post("/proto", data=proto.Row(value=[1, 2, 3, 4]).SerializeToString()).status_code == 400
    nan = proto.Row(value=[1, 2, float("nan"), 4], model="small").SerializeToString()
    response = server.post("/proto", data=nan)
    assert response.status_code == 400 and "finite" in response.json()["error"]


def test_unknown_paths_and_methods_answer_json(server: TfaasServer) -> None:
    assert server.get("/no/such/path").status_code == 404
    wrong_method = server.get("/json")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert server.get("/params/nope").status_code == 404


# -- operations: metrics (OpenAPI: test_openapi.py) --


def test_metrics_count_requests_errors_latency_batches_and_models(server: TfaasServer) -> None:
    server.post("/json", json={"model": "small", "values": [1, 2, 3, 4]})
    server.post("/json", json={"model": "nope", "values": [1, 2, 3, 4]})
    text = server.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['tfaas_requests_total{endpoint="json",method="POST",status="200"}'] >= 1
    assert samples['tfaas_request_errors_total{endpoint="json",status="404"}'] >= 1
    assert samples['tfaas_request_latency_seconds_count{endpoint="json"}'] >= 2
    assert samples["tfaas_batch_rows_count"] >= 1
    assert samples["tfaas_loaded_models"] >= 1


# -- KServe v2 binary data extension (what Triton's clients send for large tensors) --


def binary_request(header: dict, *tensors: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(t.tobytes() for t in tensors), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def test_kserve_binary_inputs_and_outputs(server: TfaasServer, expected: dict) -> None:
    rows = ROWS4.astype("<f4")
    tensor = {
        "name": "inputs",
        "shape": [5, 4],
        "datatype": "FP32",
        "parameters": {"binary_data_size": rows.nbytes},
    }
    header = {"inputs": [tensor], "outputs": [{"name": "outputs", "parameters": {"binary_data": True}}]}
    data, headers = binary_request(header, rows)
    response = server.post("/v2/models/small/infer", data=data, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    (output,) = answer["outputs"]
    assert output["shape"] == [5, 2] and output["parameters"]["binary_data_size"] == 40
    values = np.frombuffer(response.content[length:], dtype="<f4").reshape(output["shape"])
    assert close(values, expected["small"])
    # binary in, JSON out; FP64 inputs
    header64 = {"inputs": [dict(header["inputs"][0], datatype="FP64", parameters={"binary_data_size": 160})]}
    data, headers = binary_request(header64, ROWS4.astype("<f8"))
    plain = server.post("/v2/models/small/infer", data=data, headers=headers)
    assert close(np.reshape(plain.json()["outputs"][0]["data"], (5, 2)), expected["small"])


@pytest.mark.parametrize(
    ("size", "extra", "length", "message"),
    [
        (79, b"", None, "binary_data_size must be 80"),
        (80, b"\0" * 4, None, "no input claims"),
        (80, b"", "9999999", "Inference-Header-Content-Length"),
        (80, b"", "x", "Inference-Header-Content-Length"),
    ],
    ids=["wrong-size", "trailing-bytes", "header-too-long", "header-not-a-number"],
)
def test_kserve_binary_errors(
    server: TfaasServer, size: int, extra: bytes, length: str | None, message: str
) -> None:
    header = {
        "inputs": [
            {"name": "inputs", "shape": [5, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}
        ]
    }
    data, headers = binary_request(header, ROWS4.astype("<f4"))
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    response = server.post("/v2/models/small/infer", data=data + extra, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


# -- bodies of unknown length (Transfer-Encoding: chunked) --


def chunked(data: bytes, size: int = 8192) -> Iterator[bytes]:
    """A generator body, which requests sends with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_body_within_the_limit_is_read_whole(server: TfaasServer, expected: dict) -> None:
    body = json.dumps({"model": "small", "values": ROWS4.tolist()}).encode() + b" " * 100_000
    response = server.post("/json", data=chunked(body), headers={"Content-Type": "application/json"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert close(response.json(), expected["small"])


@pytest.mark.parametrize(
    "path", ["/json", "/v1/models/small:predict", "/v2/models/small/infer", "/proto", "/delete"]
)
def test_chunked_body_above_the_limit_is_refused_not_cut(server: TfaasServer, path: str) -> None:
    """The server's limit is 200000 bytes; the valid document within them used to be parsed and answered."""
    document = {"model": "small", "values": ROWS4.tolist(), "instances": ROWS4.tolist()}
    body = json.dumps(document).encode() + b" " * 250_000
    method = server.delete if path == "/delete" else server.post
    content_type = "application/octet-stream" if path == "/proto" else "application/json"
    response = method(path, data=chunked(body), headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": "the request body is too large (the limit is 200000 bytes)",
        "status": 413,
    }
