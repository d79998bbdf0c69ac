"""The OpenAPI document, generated from what the routes declare: nothing about a route is written twice.

Each view carries an ``Operation`` (``@operation(...)``): its summary, its successful answers, the error
statuses it can return, its parameters, and its request body as a ``RequestBody``, the one declaration that
the route's validation also reads. ``document(app)`` walks the app's URL map, so a route without a
declaration cannot hide: it fails the build of the document. Every error status is answered with the one
error body (``servicecore.errors.ERROR_SCHEMA``); routes behind authentication add 401 and 403.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from flask import Flask

from appliance.server.identity import PUBLIC_PATHS
from servicecore.errors import ERROR_SCHEMA

ERROR_DESCRIPTIONS = {
    400: "bad input; the message names the culprit",
    401: "no credentials, or credentials that do not verify",
    403: "a verified caller outside the access policy",
    404: "no such job (or not yours)",
    409: "the job is in the wrong state for this call",
    413: "the body, upload or unpacked archive is above its limit",
    415: "a body in a content type this call does not take",
    429: "too many log followers (yours, or everyone's)",
    507: "your disk quota would be exceeded",
}
AUTH_STATUSES = (401, 403)
ERROR_REF = {"$ref": "#/components/schemas/Error"}


@dataclass(frozen=True)
class RequestBody:
    """A JSON request body: its fields, each with its JSON schema; the validation reads the same fields."""

    name: str
    description: str
    fields: Mapping[str, Mapping[str, Any]]
    required: tuple[str, ...] = ()
    other_types: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.fields)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.description,
            "properties": {key: dict(value) for key, value in self.fields.items()},
            "required": list(self.required),
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class Operation:
    summary: str
    ok: Mapping[int, Mapping[str, Any]]  # successful statuses and their response objects
    errors: Sequence[int] = ()
    parameters: Sequence[Mapping[str, Any]] = ()
    body: RequestBody | None = None
    raw_body: Mapping[str, Any] | None = None  # a body that is not JSON (an archive)


def operation(summary: str, ok: Mapping[int, Mapping[str, Any]], **details: Any) -> Callable:
    """Attach an ``Operation`` to a view function."""

    def attach(view: Callable) -> Callable:
        view.openapi = Operation(summary, ok, **details)  # type: ignore[attr-defined]
        return view

    return attach


def json_content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": dict(schema)}}


def path_parameter(name: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", **schema}}


def query_parameter(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema or {"type": "string"}}


def openapi_path(rule: str) -> str:
    """Flask's ``/jobs/<job_id>`` as OpenAPI's ``/jobs/{job_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def statuses(app: Flask) -> dict[tuple[str, str], set[int]]:
    """Every (method, path) of the app's URL map and the statuses it is declared to answer."""
    found: dict[tuple[str, str], set[int]] = {}
    for rule, method, declared in _operations(app):
        found[(method, openapi_path(rule))] = set(declared.ok) | set(_errors(rule, declared))
    return found


def _operations(app: Flask) -> list[tuple[str, str, Operation]]:
    result = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        declared = getattr(view, "openapi", None)
        if declared is None:
            raise AssertionError(f"route {rule.rule} declares no OpenAPI operation")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            result.append((rule.rule, method.lower(), declared))
    return result


def _errors(rule: str, declared: Operation) -> list[int]:
    public = any(fnmatch.fnmatchcase(rule, pattern) for pattern in PUBLIC_PATHS)  # /ui/* too
    extra = () if public else AUTH_STATUSES
    return sorted({*declared.errors, *extra})


def document(app: Flask, schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The OpenAPI 3 document of every route of ``app``; ``schemas`` are the named response schemas."""
    spec = APISpec(title="MLaaS4HEP", version="1.0.0", openapi_version="3.0.3")
    spec.components.schema("Error", dict(ERROR_SCHEMA))
    for name, schema in schemas.items():
        spec.components.schema(name, dict(schema))
    bodies: dict[str, RequestBody] = {}
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, declared in _operations(app):
        responses: dict[str, Any] = {str(status): dict(answer) for status, answer in declared.ok.items()}
        for status in _errors(rule, declared):
            error = {"description": ERROR_DESCRIPTIONS[status], "content": json_content(ERROR_REF)}
            responses[str(status)] = error
        entry: dict[str, Any] = {"summary": declared.summary, "responses": responses}
        if declared.parameters:
            entry["parameters"] = [dict(parameter) for parameter in declared.parameters]
        if declared.body is not None:
            bodies[declared.body.name] = declared.body
            reference = {"$ref": f"#/components/schemas/{declared.body.name}"}
            content = {"application/json": {"schema": reference}}
            content.update({kind: dict(value) for kind, value in declared.body.other_types.items()})
            entry["requestBody"] = {"required": True, "content": content}
        elif declared.raw_body is not None:
            entry["requestBody"] = dict(declared.raw_body)
        paths.setdefault(openapi_path(rule), {})[method] = entry
    for name, body in bodies.items():
        spec.components.schema(name, body.schema())
    for path, operations in paths.items():
        spec.path(path, operations=operations)
    return spec.to_dict()
