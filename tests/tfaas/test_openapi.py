"""The OpenAPI document: every route of the app, with every error status it can answer and the one body."""

from __future__ import annotations

from pathlib import Path

import pytest

from servicecore.errors import ERROR_SCHEMA
from tests.tfaas.server import TfaasServer
from tfaas.api import create_app
from tfaas.openapi import openapi_document
from tfaas.settings import Settings

# Written out here, not imported, so that the document is checked against what the routes do.
PUBLIC = {"/v2/health/live", "/v2/health/ready", "/status", "/metrics"}
IDENTITY_LAYER = {401, 403}
KNOWN_ERRORS = {400, 401, 403, 404, 409, 413, 415, 503}


def expected_errors(path: str, method: str) -> set[int]:
    """What a route can answer, from what it takes: a body, a model name, a version, ownership."""
    expected: set[int] = set() if path in PUBLIC else set(IDENTITY_LAYER)
    if "{name}" in path:
        expected |= {404}
    if "{version}" in path or path.startswith(("/params", "/delete")):  # a version in the path or query
        expected |= {400}
    if method == "post":
        expected |= {400, 413, 415} | ({403} if path == "/upload" else {404})
    if method == "delete":
        expected |= {400, 403, 404, 413}
    return expected


def routes(model_dir: Path) -> list[tuple[str, str]]:
    app = create_app(Settings(model_dir=model_dir, preload=False))
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        found += [(path, method.lower()) for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]
    return found


def documented_errors(document: dict, path: str, method: str) -> set[int]:
    responses = document["paths"][path][method]["responses"]
    return {
        int(status) for status in responses if int(status) >= 400 and not (path in PUBLIC and status == "503")
    }


def test_every_route_is_documented_with_its_error_statuses(tmp_path: Path) -> None:
    document = openapi_document("")
    assert document["components"]["schemas"]["Error"] == ERROR_SCHEMA
    found = routes(tmp_path)
    assert len(found) >= 27
    for path, method in found:
        assert path in document["paths"], path
        assert method in document["paths"][path], (path, method)
        errors = documented_errors(document, path, method)
        assert expected_errors(path, method) <= errors, (path, method, errors)
        assert errors <= KNOWN_ERRORS, (path, method, errors)
        for status in errors:
            answer = document["paths"][path][method]["responses"][str(status)]
            schema = answer["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
    # and nothing documented that the app does not serve
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == set(found)


PNG = {"Content-Type": "image/png"}
# Requests that each draw one error from a route: the status the server answers must be in the document.
ERRORS_SEEN = [
    ("post", "/json", "/json", {"json": {"model": "nope", "values": [1]}}),
    ("post", "/json", "/json", {"json": {"values": [1]}}),
    ("post", "/json", "/json", {"data": b"<x/>", "headers": {"Content-Type": "application/xml"}}),
    ("post", "/json", "/json", {"json": {"model": "small", "values": [1.0] * 60000}}),
    ("post", "/proto", "/proto", {"data": b"{}", "headers": {"Content-Type": "application/json"}}),
    ("post", "/upload", "/upload", {"data": b"x", "headers": {"Content-Type": "text/plain"}}),
    ("get", "/params/{name}", "/params/small?version=x", {}),
    ("get", "/params/{name}", "/params/nope", {}),
    ("delete", "/delete/{name}", "/delete/nope", {}),
    ("delete", "/delete", "/delete", {"data": {"version": "1"}}),
    ("post", "/v1/models/{name}:predict", "/v1/models/small:predict", {"json": {}}),
    ("post", "/v1/models/{name}:predict", "/v1/models/nope:predict", {"json": {"instances": [[1]]}}),
    ("get", "/v1/models/{name}/versions/{version}", "/v1/models/small/versions/x", {}),
    ("get", "/v1/models/{name}/metadata", "/v1/models/nope/metadata", {}),
    ("get", "/v2/models/{name}/versions/{version}/ready", "/v2/models/small/versions/0/ready", {}),
    ("post", "/v2/models/{name}/infer", "/v2/models/small/infer", {"data": b"{}", "headers": PNG}),
    ("post", "/v2/models/{name}/infer", "/v2/models/small/infer", {"json": {"inputs": "x"}}),
]


@pytest.mark.parametrize(("method", "route", "url", "kwargs"), ERRORS_SEEN)
def test_the_statuses_the_server_answers_are_documented(
    server: TfaasServer, method: str, route: str, url: str, kwargs: dict
) -> None:
    response = getattr(server, method)(url, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert response.json() == {"error": response.json()["error"], "status": response.status_code}
    document = server.get("/openapi.json").json()
    assert response.status_code in documented_errors(document, route, method)
