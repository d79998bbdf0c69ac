"""The original TFaaS API (the Go server's paths and payloads): /json, /proto, /upload, /delete, /models,
/params.

``/json`` also takes a list of rows, ``version``, and raw branch values (``raw`` columns or ``events``) that
the bundle's feature spec turns into the model input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flask import Blueprint, Response, request
from google.protobuf.message import DecodeError

from servicecore.auth import require_owner
from servicecore.errors import BadInputError, UnsupportedMediaTypeError
from servicecore.http import json_body
from tfaas import proto
from tfaas.dataplane import DataPlane, parse_version
from tfaas.predictor import LoadedModel
from tfaas.protocols.common import JSON_TYPES, dumps, json_response
from tfaas.uploads import stage_upload

PROTO_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/x-protobuf",
        "application/protobuf",
        "application/vnd.google.protobuf",
        "",
    }
)


def model_name(body: Mapping[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadInputError('say which model to use with "model": "<name>"')
    return name


def json_matrix(plane: DataPlane, model: LoadedModel, body: Mapping[str, Any]) -> tuple[np.ndarray, bool]:
    """The model input of a ``/json`` body: ``values``, ``raw`` (columns) or ``events`` (rows)."""
    given = [key for key in ("values", "raw", "events") if key in body]
    if len(given) != 1:
        raise BadInputError('send exactly one of "values", "raw" (columns) or "events" (rows)')
    if "values" in body:
        return plane.values(model, body["values"])
    if "raw" in body:
        if not isinstance(body["raw"], dict):
            raise BadInputError("raw must map branch names to lists with one entry per event")
        return plane.raw(model, body["raw"]), False
    return plane.events(model, body["events"]), False


def predict_json(plane: DataPlane, body: Mapping[str, Any]) -> bytes:
    """The answer to a ``/json`` body: a bare list for one row, a list of lists for a batch."""
    with plane.in_flight:
        model = plane.model(model_name(body), parse_version(body.get("version")))
        matrix, single = json_matrix(plane, model, body)
        result = plane.predict(model, matrix)
    return dumps(result[0] if single else result)


def blueprint(plane: DataPlane, base: str) -> Blueprint:
    bp = Blueprint("original", __name__, url_prefix=base or None)

    def json_view() -> Response:
        return Response(predict_json(plane, json_body(JSON_TYPES)), mimetype="application/json")

    def proto_view() -> Response:
        if request.mimetype not in PROTO_TYPES:
            raise UnsupportedMediaTypeError(
                f"unsupported content type {request.mimetype!r}: send application/octet-stream"
            )
        try:
            row = proto.Row.FromString(request.get_data(cache=False))
        except DecodeError as err:
            raise BadInputError(f"the body is not a serialized tfaaspb.Row: {err}") from None
        if not row.model:
            raise BadInputError("the Row names no model")
        with plane.in_flight:
            model = plane.model(row.model)
            matrix, _ = plane.values(model, np.asarray(row.value, dtype=np.float32), "Row.value")
            result = model.predict(matrix)[0]
        labels = model.bundle.labels
        predictions = proto.Predictions()
        for index, probability in enumerate(result.tolist()):
            predictions.prediction.add(
                label=labels[index] if index < len(labels) else str(index), probability=probability
            )
        return Response(predictions.SerializeToString(), mimetype="application/octet-stream")

    # Endpoint names are those of the metrics' "endpoint" label, as before the protocols were split.
    bp.add_url_rule("/json", "json", json_view, methods=["POST"])
    bp.add_url_rule("/predict/json", "predict_json", json_view, methods=["POST"])
    bp.add_url_rule("/proto", "proto", proto_view, methods=["POST"])
    bp.add_url_rule("/predict/proto", "predict_proto", proto_view, methods=["POST"])

    @bp.get("/models")
    def models() -> Response:
        listing = []
        for _name, versions in sorted(plane.models().items()):
            latest = versions[max(versions)]
            listing.append({**latest.describe(), "versions": sorted(versions)})
        return json_response(listing)

    @bp.get("/params/<name>")
    def params(name: str) -> Response:
        return json_response(plane.bundle(name, parse_version(request.args.get("version"))).describe())

    @bp.delete("/delete")
    @bp.delete("/delete/<name>")
    def delete(name: str | None = None) -> Response:
        version = parse_version(request.args.get("version"))
        if name is None:
            if request.mimetype == "application/json":
                body = json_body()
                name, version = body.get("model"), parse_version(body.get("version", version))
            else:
                name = request.form.get("model")
                version = parse_version(request.form.get("version", version))
        if not isinstance(name, str) or not name:
            raise BadInputError("say which model to delete: DELETE /delete/<model> or form field 'model'")
        require_owner(name)
        deleted = plane.store.repository.delete(name, version)
        plane.store.refresh(force=True)
        return json_response({"deleted": name, "versions": deleted})

    @bp.post("/upload")
    def upload() -> Response:
        name, version = stage_upload(plane.store)
        return json_response({"model": name, "version": version}, status=201)

    return bp
