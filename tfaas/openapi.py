"""The OpenAPI 3 document of every TFaaS endpoint, served at ``/openapi.json``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from apispec import APISpec

ERROR = {
    "description": "bad input",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
NOT_FOUND = {"description": "unknown model or version", "content": ERROR["content"]}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "model name",
}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
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


def _ok(description: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": description, "content": {content_type: {"schema": {}}}}}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    predict_json = {
        "summary": "Predict from JSON (original TFaaS API)",
        "requestBody": _json_body("PredictJson"),
        "responses": {
            **_ok("a list of outputs for one row, a list of lists for a batch"),
            "400": ERROR,
            "404": NOT_FOUND,
            "413": ERROR,
            "415": ERROR,
        },
    }
    predict_proto = {
        "summary": "Predict from a protobuf tfaaspb.Row; answers tfaaspb.Predictions",
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"format": "binary"}}},
        },
        "responses": {
            **_ok("serialized tfaaspb.Predictions", "application/octet-stream"),
            "400": ERROR,
            "404": NOT_FOUND,
            "415": ERROR,
        },
    }
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
                "application/gzip": {"schema": {"format": "binary"}},
                "application/x-tar": {"schema": {"format": "binary"}},
            },
        },
        "responses": {
            "201": {"description": "published as a new version"},
            "400": ERROR,
            "413": ERROR,
            "415": ERROR,
        },
    }
    delete = {
        "summary": "Delete a model, or one version with ?version=N",
        "responses": {**_ok("what was deleted"), "404": NOT_FOUND},
    }
    tf_predict = {
        "summary": "TF Serving REST predict",
        "requestBody": _json_body("TfServingPredict"),
        "responses": {**_ok("predictions or outputs"), "400": ERROR, "404": NOT_FOUND},
    }
    tf_status = {
        "summary": "TF Serving model status",
        "responses": {**_ok("model_version_status"), "404": NOT_FOUND},
    }
    tf_meta = {
        "summary": "TF Serving model metadata",
        "responses": {**_ok("signature_def"), "404": NOT_FOUND},
    }
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
        "responses": {**_ok("outputs"), "400": ERROR, "404": NOT_FOUND},
    }
    v2_meta = {
        "summary": "KServe v2 model metadata",
        "responses": {**_ok("model metadata"), "404": NOT_FOUND},
    }
    v2_ready = {"summary": "KServe v2 model readiness", "responses": {**_ok("ready"), "404": NOT_FOUND}}
    with_name = [NAME]
    with_version = [NAME, VERSION]
    return [
        ("/json", "post", predict_json),
        ("/predict/json", "post", predict_json),
        ("/proto", "post", predict_proto),
        ("/predict/proto", "post", predict_proto),
        ("/upload", "post", upload),
        (
            "/models",
            "get",
            {"summary": "Every model's params.json (latest version)", "responses": _ok("list")},
        ),
        (
            "/params/{name}",
            "get",
            {
                "summary": "A model's params.json",
                "parameters": with_name,
                "responses": {**_ok("params"), "404": NOT_FOUND},
            },
        ),
        (
            "/delete",
            "delete",
            {
                **delete,
                "requestBody": {
                    "content": {
                        "multipart/form-data": {
                            "schema": {"type": "object", "properties": {"model": {"type": "string"}}}
                        }
                    }
                },
            },
        ),
        ("/delete/{name}", "delete", {**delete, "parameters": with_name}),
        ("/status", "get", {"summary": "Server and host status (public)", "responses": _ok("status")}),
        ("/v1/models/{name}:predict", "post", {**tf_predict, "parameters": with_name}),
        ("/v1/models/{name}/versions/{version}:predict", "post", {**tf_predict, "parameters": with_version}),
        ("/v1/models/{name}", "get", {**tf_status, "parameters": with_name}),
        ("/v1/models/{name}/versions/{version}", "get", {**tf_status, "parameters": with_version}),
        ("/v1/models/{name}/metadata", "get", {**tf_meta, "parameters": with_name}),
        ("/v1/models/{name}/versions/{version}/metadata", "get", {**tf_meta, "parameters": with_version}),
        ("/v2", "get", {"summary": "KServe v2 server metadata", "responses": _ok("metadata")}),
        ("/v2/health/live", "get", {"summary": "Liveness (public)", "responses": _ok("live")}),
        ("/v2/health/ready", "get", {"summary": "Readiness (public)", "responses": _ok("ready")}),
        ("/v2/models/{name}", "get", {**v2_meta, "parameters": with_name}),
        ("/v2/models/{name}/versions/{version}", "get", {**v2_meta, "parameters": with_version}),
        ("/v2/models/{name}/ready", "get", {**v2_ready, "parameters": with_name}),
        ("/v2/models/{name}/versions/{version}/ready", "get", {**v2_ready, "parameters": with_version}),
        ("/v2/models/{name}/infer", "post", {**infer, "parameters": [*infer["parameters"], *with_name]}),
        (
            "/v2/models/{name}/versions/{version}/infer",
            "post",
            {**infer, "parameters": [*infer["parameters"], *with_version]},
        ),
        (
            "/metrics",
            "get",
            {"summary": "Prometheus metrics (public)", "responses": _ok("metrics", "text/plain")},
        ),
        ("/openapi.json", "get", {"summary": "This document", "responses": _ok("OpenAPI 3")}),
    ]


@lru_cache(maxsize=8)
def openapi_document(base: str = "") -> dict[str, Any]:
    spec = APISpec(
        title="TFaaS",
        version="2.0.0",
        openapi_version="3.0.3",
        info={
            "description": "TensorFlow as a Service: the original TFaaS API, TF Serving REST and KServe v2."
        },
        servers=[{"url": base or "/"}],
    )
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, operation in _operations():
        paths.setdefault(path, {})[method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
