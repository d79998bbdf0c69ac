"""TF Serving's REST API (v1): predict with ``instances`` (rows) or ``inputs`` (columns), status, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flask import Blueprint, Response

from servicecore.errors import BadInputError
from servicecore.http import json_body
from tfaas.dataplane import DataPlane, parse_version
from tfaas.predictor import LoadedModel
from tfaas.protocols.common import dumps, json_response


def instances_matrix(plane: DataPlane, model: LoadedModel, instances: Any) -> np.ndarray:
    """Rows: lists of numbers, ``{"<input>": row}`` objects, or raw events (objects of branch values).

    A NumPy array is rows of numbers the fast lane decoded (exactly as ``np.array`` of the lists).
    """
    if not isinstance(instances, np.ndarray):
        if not isinstance(instances, list) or not instances:
            raise BadInputError("instances must be a non-empty list")
        if all(isinstance(i, dict) for i in instances):
            if all(set(i) == {model.input_name} for i in instances):
                return plane.values(model, [i[model.input_name] for i in instances], "instances")[0]
            return plane.events(model, instances)
    matrix, single = plane.values(model, instances, "instances")
    if single:
        raise BadInputError(f"instances must be a list of rows of {model.dim} numbers")
    return matrix


def inputs_matrix(plane: DataPlane, model: LoadedModel, inputs: Any) -> np.ndarray:
    """Columns: a matrix, ``{"<input>": matrix}``, or raw branch columns by name."""
    if isinstance(inputs, dict):
        if set(inputs) == {model.input_name}:
            return plane.values(model, inputs[model.input_name], "inputs")[0]
        return plane.raw(model, inputs)
    return plane.values(model, inputs, "inputs")[0]


def check_signature(model: LoadedModel, signature: Any) -> None:
    if signature not in (None, model.bundle.params.get("signature") or "serving_default"):
        raise BadInputError(f"model {model.bundle.name!r} has no signature {signature!r}")


def predict(plane: DataPlane, name: str, version: str | None, body: Mapping[str, Any]) -> bytes:
    """The answer to a predict body: ``{"predictions"}`` for instances, ``{"outputs"}`` for inputs."""
    with plane.in_flight:
        model = plane.model(name, parse_version(version))
        check_signature(model, body.get("signature_name"))
        if ("instances" in body) == ("inputs" in body):
            raise BadInputError('send exactly one of "instances" (rows) or "inputs" (columns)')
        if "instances" in body:
            matrix = instances_matrix(plane, model, body["instances"])
            return dumps({"predictions": plane.predict(model, matrix)})
        matrix = inputs_matrix(plane, model, body["inputs"])
        return dumps({"outputs": plane.predict(model, matrix)})


def _tensor_info(name: str, shape: list[int]) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape], "unknown_rank": False},
        "name": f"{name}:0",
    }


def blueprint(plane: DataPlane, base: str) -> Blueprint:
    bp = Blueprint("tfserving", __name__, url_prefix=base or None)

    @bp.post("/v1/models/<name>:predict")
    @bp.post("/v1/models/<name>/versions/<version>:predict")
    def tf_predict(name: str, version: str | None = None) -> Response:
        return Response(predict(plane, name, version, json_body()), mimetype="application/json")

    @bp.get("/v1/models/<name>")
    @bp.get("/v1/models/<name>/versions/<version>")
    def tf_status(name: str, version: str | None = None) -> Response:
        wanted = parse_version(version)
        plane.bundle(name, wanted)
        shown = [wanted] if wanted else sorted(plane.versions(name), reverse=True)
        status = {"error_code": "OK", "error_message": ""}
        return json_response(
            {
                "model_version_status": [
                    {"version": str(v), "state": "AVAILABLE", "status": status} for v in shown
                ]
            }
        )

    @bp.get("/v1/models/<name>/metadata")
    @bp.get("/v1/models/<name>/versions/<version>/metadata")
    def tf_metadata(name: str, version: str | None = None) -> Response:
        model = plane.model(name, parse_version(version))
        signature = model.bundle.params.get("signature") or "serving_default"
        definition = {
            "inputs": {model.input_name: _tensor_info(model.input_name, [-1, model.dim])},
            "outputs": {model.output_name: _tensor_info(model.output_name, [-1, model.n_outputs or -1])},
            "method_name": "tensorflow/serving/predict",
        }
        return json_response(
            {
                "model_spec": {"name": name, "version": str(model.bundle.version), "signature_name": ""},
                "metadata": {"signature_def": {"signature_def": {signature: definition}}},
            }
        )

    return bp
