"""KServe v2 / Open Inference Protocol: server and model metadata, health, and inference in JSON or with the
binary tensor data extension of Triton's clients (``Inference-Header-Content-Length``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from flask import Blueprint, Response, request

from servicecore.errors import BadInputError, UnsupportedMediaTypeError
from servicecore.http import json_body
from tfaas.dataplane import DataPlane, parse_version
from tfaas.predictor import LoadedModel
from tfaas.protocols.common import JSON_TYPES, dumps, json_response

SERVER_NAME = "tfaas"
SERVER_VERSION = "2.0.0"
KSERVE_DTYPES = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}
# The JSON header's length; the tensors' raw bytes follow it.
BINARY_HEADER = "Inference-Header-Content-Length"


def _binary_tensor(
    name: str, shape: list[int], datatype: str, size: Any, binary: memoryview | None, offset: int
) -> tuple[np.ndarray, int]:
    """One input of the binary data extension: little-endian values, in the inputs' order."""
    if binary is None:
        raise BadInputError(f"input {name!r} declares binary data but the request has no {BINARY_HEADER}")
    dtype = np.dtype(KSERVE_DTYPES[datatype])
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or size != expected or offset + size > len(binary):
        raise BadInputError(
            f"input {name!r}: binary_data_size must be {expected} bytes for {datatype} {shape}, "
            f"and present in the body"
        )
    return np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape), offset + size


def _tensors(inputs: Any, binary: memoryview | None) -> dict[str, np.ndarray]:
    """The request's input tensors by name, each in its declared shape."""
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise BadInputError("inputs must be a non-empty list of tensors {name, shape, datatype, data}")
    tensors = {}
    offset = 0
    for tensor in inputs:
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str):
            raise BadInputError("every input tensor needs a name")
        if datatype not in KSERVE_DTYPES:
            raise BadInputError(f"input {name!r}: datatype must be numeric (FP32, ...), got {datatype!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise BadInputError(f"input {name!r}: shape must be a list of sizes")
        parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        if "binary_data_size" in parameters:
            tensors[name], offset = _binary_tensor(
                name, shape, datatype, parameters["binary_data_size"], binary, offset
            )
            continue
        values = tensor.get("data")  # a NumPy array when the fast lane decoded the numbers
        if not isinstance(values, list | np.ndarray):
            raise BadInputError(f"input {name!r}: data must be a list of numbers")
        try:
            array = np.asarray(values)
        except ValueError:
            raise BadInputError(f"input {name!r}: data is ragged") from None
        if array.dtype.kind not in "fiu" or array.size != math.prod(shape):
            raise BadInputError(
                f"input {name!r}: data must hold {math.prod(shape)} numbers for shape {shape}"
            )
        tensors[name] = array.reshape(shape)
    if binary is not None and offset != len(binary):
        raise BadInputError(f"the request carries {len(binary) - offset} bytes that no input claims")
    return tensors


def inputs_matrix(
    plane: DataPlane, model: LoadedModel, inputs: Any, binary: memoryview | None = None
) -> np.ndarray:
    """One tensor named like the model input (or the only one), shape [rows, dim]; or raw flat branches."""
    tensors = _tensors(inputs, binary)
    if model.input_name in tensors or (len(tensors) == 1 and model.features is None):
        (array,) = [tensors[model.input_name]] if model.input_name in tensors else tensors.values()
        if array.ndim != 2:
            raise BadInputError(f"input {model.input_name!r} must have shape [rows, {model.dim}]")
        return plane.values(model, array, f"input {model.input_name!r}")[0]
    for name, array in tensors.items():
        if array.ndim != 1:
            raise BadInputError(f"raw branch {name!r} must have shape [events] (lists need the JSON APIs)")
    return plane.raw(model, tensors)


def wants_binary(body: Mapping[str, Any], output_name: str, name: str) -> bool:
    """Binary output is asked for per output (``binary_data``) or for all (``binary_data_output``)."""
    parameters = body.get("parameters")
    binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    for wanted in body.get("outputs") or []:
        if not isinstance(wanted, dict) or wanted.get("name") != output_name:
            raise BadInputError(f"model {name!r} has one output, {output_name!r}")
        wanted_parameters = wanted.get("parameters")
        if isinstance(wanted_parameters, dict) and "binary_data" in wanted_parameters:
            binary = wanted_parameters["binary_data"] is True
    return binary


def infer(
    plane: DataPlane,
    name: str,
    version: str | None,
    body: Mapping[str, Any],
    binary: memoryview | None = None,
) -> tuple[bytes, int | None]:
    """The inference answer: (JSON body, None), or (header and raw output bytes, the header's length)."""
    with plane.in_flight:
        model = plane.model(name, parse_version(version))
        matrix = inputs_matrix(plane, model, body.get("inputs"), binary)
        binary_output = wants_binary(body, model.output_name, name)
        result = np.ascontiguousarray(model.predict(matrix), dtype="<f4")
    output: dict[str, Any] = {"name": model.output_name, "datatype": "FP32", "shape": list(result.shape)}
    response: dict[str, Any] = {"model_name": name, "model_version": str(model.bundle.version)}
    if "id" in body:
        response["id"] = body["id"]
    if not binary_output:
        return dumps({**response, "outputs": [{**output, "data": result.ravel()}]}), None
    data = result.tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = dumps({**response, "outputs": [output]})
    return header + data, len(header)


def binary_body(header_length: str, mimetype: str, raw: bytes) -> tuple[dict[str, Any], memoryview]:
    """The inference header and the tensors' bytes of a request that uses the binary data extension."""
    if mimetype not in JSON_TYPES and mimetype != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            f"unsupported content type {mimetype!r}: send application/octet-stream"
        )
    try:
        length = int(header_length)
        if not 0 < length <= len(raw):
            raise ValueError(header_length)
        body = orjson.loads(raw[:length])
    except ValueError as err:
        raise BadInputError(f"bad {BINARY_HEADER} or inference header: {err}") from None
    if not isinstance(body, dict):
        raise BadInputError("the inference header must be a JSON object")
    return body, memoryview(raw)[length:]


def _request_body() -> tuple[dict[str, Any], memoryview | None]:
    """The JSON inference request, and the tensors' bytes when the binary data extension is used."""
    header_length = request.headers.get(BINARY_HEADER)
    if header_length is None:
        return json_body(), None
    if request.mimetype not in JSON_TYPES and request.mimetype != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            f"unsupported content type {request.mimetype!r}: send application/octet-stream"
        )
    return binary_body(header_length, request.mimetype, request.get_data(cache=False))


def blueprint(plane: DataPlane, base: str) -> Blueprint:
    bp = Blueprint("kserve", __name__, url_prefix=base or None)

    @bp.get("/v2")
    def server_metadata() -> Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    @bp.get("/v2/health/live")
    def live() -> Response:
        return json_response({"live": True})

    @bp.get("/v2/health/ready")
    def ready() -> Response:
        """Ready once this worker has loaded the models that were there at its start."""
        is_ready = plane.is_ready()
        return json_response({"ready": is_ready}, status=200 if is_ready else 503)

    @bp.get("/v2/models/<name>")
    @bp.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        model = plane.model(name, parse_version(version))
        return json_response(
            {
                "name": name,
                "versions": [str(v) for v in plane.versions(name)],
                "platform": "tensorflow_savedmodel",
                "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, model.dim]}],
                "outputs": [
                    {"name": model.output_name, "datatype": "FP32", "shape": [-1, model.n_outputs or -1]}
                ],
            }
        )

    @bp.get("/v2/models/<name>/ready")
    @bp.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        model = plane.model(name, parse_version(version))
        return json_response({"name": name, "version": str(model.bundle.version), "ready": True})

    @bp.post("/v2/models/<name>/infer", endpoint="infer")
    @bp.post("/v2/models/<name>/versions/<version>/infer", endpoint="infer")
    def infer_view(name: str, version: str | None = None) -> Response:
        body, binary = _request_body()
        payload, header_length = infer(plane, name, version, body, binary)
        if header_length is None:
            return Response(payload, mimetype="application/json")
        answer = Response(payload, mimetype="application/octet-stream")
        answer.headers[BINARY_HEADER] = str(header_length)
        return answer

    return bp
