"""The OpenAPI 3 document of every TFaaS endpoint, served at ``/openapi.json``.

Each operation lists the error statuses it can answer, each with the one error body
(``servicecore.errors.ERROR_SCHEMA``). Routes outside the public paths of ``tfaas.identity`` also get the
statuses of the identity layer (401, 403, and 503 when the identity provider cannot be reached), since an
``auth`` section may be configured. ``tests/tfaas/test_openapi.py`` checks the document against the app's
URL map and against the statuses the server really answers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from apispec import APISpec

from servicecore.errors import ERROR_SCHEMA
from tfaas.identity import PUBLIC_PATHS

ERROR_DESCRIPTIONS = {
    400: "bad input; the message names the culprit",
    401: "no credentials, or credentials that do not verify (identity layer)",
    403: "a caller outside the access policy, or a model outside the caller's namespace",
    404: "unknown model or version",
    409: "the model's bundle is marked not servable by its training (the reason is in the message)",
    413: "the body is above the limit (chunked bodies included)",
    415: "a content type the route does not take",
    503: "the identity provider cannot be reached (identity layer)",
}
AUTH_STATUSES = (401, 403, 503)
# What each kind of route can answer besides the identity layer's statuses.
PREDICT = (400, 404, 409, 413, 415)
BY_NAME = (404,)
BY_VERSION = (400, 404)
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "model name",
}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
VERSION_QUERY = {"name": "version", "in": "query", "schema": {"type": "integer", "minimum": 1}}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR_SCHEMA,
    "PredictJson": {
        "type": "object",
        "description": "Send exactly one of values (one row or a list of rows), raw (branch columns) or "
        "events (one object per event); raw and events use the bundle's feature spec.",
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "keys": {
                "type": "array",
                "items": {"type": "string"},
                "description": "ignored, as in the original",
            },
            "values": {
                "oneOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                ]
            },
            "raw": {"type": "object", "additionalProperties": {"type": "array"}},
            "events": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["model"],
    },
    "TfServingPredict": {
        "type": "object",
        "properties": {"signature_name": {"type": "string"}, "instances": {"type": "array"}, "inputs": {}},
    },
    "KServeTensor": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "example": "FP32"},
            "data": {"type": "array"},
        },
        "required": ["name", "shape", "datatype", "data"],
    },
    "KServeInfer": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/KServeTensor"}},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        "required": ["inputs"],
    },
}


def _json_body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _ok(description: str, content_type: str = "application/json", status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {content_type: {"schema": {}}}}}


def _responses(path: str, ok: dict[str, Any], errors: tuple[int, ...]) -> dict[str, Any]:
    """Success, the operation's own errors, and the identity layer's unless the path is public."""
    statuses = set(errors) if path in PUBLIC_PATHS else set(errors) | set(AUTH_STATUSES)
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        **ok,
        **{
            str(status): {"description": ERROR_DESCRIPTIONS[status], "content": content}
            for status in sorted(statuses)
        },
    }


def _operations() -> list[tuple[str, str, dict[str, Any], dict[str, Any], tuple[int, ...]]]:
    """(path, method, operation without responses, success responses, error statuses) of every route."""
    predict_json = {
        "summary": "Predict from JSON (original TFaaS API)",
        "requestBody": _json_body("PredictJson"),
    }
    json_ok = _ok("a list of outputs for one row, a list of lists for a batch")
    predict_proto = {
        "summary": "Predict from a protobuf tfaaspb.Row; answers tfaaspb.Predictions",
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
    }
    proto_ok = _ok("serialized tfaaspb.Predictions", "application/octet-stream")
    upload = {
        "summary": "Upload a model bundle (multipart form, or a gzipped tar whose folder is the model name)",
        "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "params": {"type": "string", "format": "binary"},
                            "labels": {"type": "string", "format": "binary"},
                            "model": {"type": "string", "format": "binary"},
                        },
                    }
                },
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    }
    delete = {"summary": "Delete a model, or one version with ?version=N", "parameters": [VERSION_QUERY]}
    delete_form = {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"model": {"type": "string"}, "version": {"type": "integer"}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"model": {"type": "string"}, "version": {"type": "integer"}},
                }
            },
        }
    }
    tf_predict = {"summary": "TF Serving REST predict", "requestBody": _json_body("TfServingPredict")}
    infer = {
        "summary": "KServe v2 inference",
        "description": "With the binary data extension the body is application/octet-stream: the JSON "
        "header (Inference-Header-Content-Length bytes), then each input's raw little-endian values.",
        "parameters": [
            {"name": "Inference-Header-Content-Length", "in": "header", "schema": {"type": "integer"}}
        ],
        "requestBody": {
            "required": True,
            "content": {
                **_json_body("KServeInfer")["content"],
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    }
    with_name = {"parameters": [NAME]}
    with_version = {"parameters": [NAME, VERSION]}
    infer_name = {**infer, "parameters": [*infer["parameters"], NAME]}
    infer_version = {**infer, "parameters": [*infer["parameters"], NAME, VERSION]}
    tf_status = {"summary": "TF Serving model status"}
    tf_meta = {"summary": "TF Serving model metadata"}
    v2_meta = {"summary": "KServe v2 model metadata"}
    v2_ready = {"summary": "KServe v2 model readiness"}
    not_ready = {
        "description": "this worker is still loading the models present at its start",
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}
        },
    }
    return [
        ("/json", "post", predict_json, json_ok, PREDICT),
        ("/predict/json", "post", predict_json, json_ok, PREDICT),
        ("/proto", "post", predict_proto, proto_ok, PREDICT),
        ("/predict/proto", "post", predict_proto, proto_ok, PREDICT),
        ("/upload", "post", upload, _ok("published as a new version", status="201"), (400, 403, 413, 415)),
        ("/models", "get", {"summary": "Every model's params.json (latest version)"}, _ok("list"), ()),
        (
            "/params/{name}",
            "get",
            {"summary": "A model's params.json", "parameters": [NAME, VERSION_QUERY]},
            _ok("params"),
            BY_VERSION,
        ),
        (
            "/delete",
            "delete",
            {**delete, "requestBody": delete_form},
            _ok("what was deleted"),
            (400, 403, 404, 413),
        ),
        (
            "/delete/{name}",
            "delete",
            {**delete, "parameters": [NAME, VERSION_QUERY]},
            _ok("what was deleted"),
            (400, 403, 404, 413),
        ),
        ("/status", "get", {"summary": "Server and host status (public)"}, _ok("status"), ()),
        (
            "/v1/models/{name}:predict",
            "post",
            {**tf_predict, **with_name},
            _ok("predictions or outputs"),
            PREDICT,
        ),
        (
            "/v1/models/{name}/versions/{version}:predict",
            "post",
            {**tf_predict, **with_version},
            _ok("predictions or outputs"),
            PREDICT,
        ),
        ("/v1/models/{name}", "get", {**tf_status, **with_name}, _ok("model_version_status"), BY_NAME),
        (
            "/v1/models/{name}/versions/{version}",
            "get",
            {**tf_status, **with_version},
            _ok("model_version_status"),
            BY_VERSION,
        ),
        ("/v1/models/{name}/metadata", "get", {**tf_meta, **with_name}, _ok("signature_def"), BY_NAME),
        (
            "/v1/models/{name}/versions/{version}/metadata",
            "get",
            {**tf_meta, **with_version},
            _ok("signature_def"),
            BY_VERSION,
        ),
        ("/v2", "get", {"summary": "KServe v2 server metadata"}, _ok("metadata"), ()),
        ("/v2/health/live", "get", {"summary": "Liveness (public)"}, _ok("live"), ()),
        (
            "/v2/health/ready",
            "get",
            {"summary": "Readiness (public)"},
            {**_ok("ready"), "503": not_ready},
            (),
        ),
        ("/v2/models/{name}", "get", {**v2_meta, **with_name}, _ok("model metadata"), BY_NAME),
        (
            "/v2/models/{name}/versions/{version}",
            "get",
            {**v2_meta, **with_version},
            _ok("model metadata"),
            BY_VERSION,
        ),
        ("/v2/models/{name}/ready", "get", {**v2_ready, **with_name}, _ok("ready"), BY_NAME),
        (
            "/v2/models/{name}/versions/{version}/ready",
            "get",
            {**v2_ready, **with_version},
            _ok("ready"),
            BY_VERSION,
        ),
        ("/v2/models/{name}/infer", "post", infer_name, _ok("outputs"), PREDICT),
        ("/v2/models/{name}/versions/{version}/infer", "post", infer_version, _ok("outputs"), PREDICT),
        ("/metrics", "get", {"summary": "Prometheus metrics (public)"}, _ok("metrics", "text/plain"), ()),
        ("/openapi.json", "get", {"summary": "This document"}, _ok("OpenAPI 3"), ()),
    ]


@lru_cache(maxsize=8)
def openapi_document(base: str = "") -> dict[str, Any]:
    spec = APISpec(
        title="TFaaS",
        version="2.0.0",
        openapi_version="3.0.3",
        info={
            "description": "TensorFlow as a Service: the original TFaaS API, TF Serving REST and KServe v2. "
            'Every error is {"error": message, "status": N}.'
        },
        servers=[{"url": base or "/"}],
    )
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, operation, ok, errors in _operations():
        paths.setdefault(path, {})[method] = {**operation, "responses": _responses(path, ok, errors)}
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
