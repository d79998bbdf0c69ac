"""The OpenAPI document comes from the routes' declarations: every route, every status, one error body."""

from __future__ import annotations

from appliance.server.api import openapi_document
from appliance.server.openapi import openapi_path, statuses
from appliance.server.submission import WORKFLOW
from servicecore.errors import ERROR_SCHEMA

PUBLIC = {"/hello", "/health", "/metrics", "/openapi.json", "/ui", "/ui/", "/ui/{name}"}


def test_every_route_of_the_url_map_is_documented_with_its_statuses(client):
    app = client.application
    document = client.get("/openapi.json").get_json()
    assert document == openapi_document(app)
    routes = {
        (method.lower(), openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert documented == routes
    declared = statuses(app)
    for method, path in routes:
        responses = document["paths"][path][method]["responses"]
        assert {int(status) for status in responses} == declared[(method, path)], (method, path)
        for status, answer in responses.items():
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
        if path not in PUBLIC:
            assert {"401", "403"} <= set(responses), (method, path)
    assert document["components"]["schemas"]["Error"] == ERROR_SCHEMA


def test_the_statuses_are_the_ones_the_routes_answer(client, remote_samples):
    """A few of the declared statuses, provoked for real."""
    paths = client.get("/openapi.json").get_json()["paths"]
    unknown = "0123456789abcdef0123456789abcdef"
    provoked = {
        ("get", "/jobs/{job_id}"): client.get(f"/jobs/{unknown}").status_code,
        ("delete", "/jobs/{job_id}"): client.delete(f"/jobs/{unknown}").status_code,
        ("get", "/jobs"): client.get("/jobs?state=sleeping").status_code,
        ("get", "/jobs/{job_id}/logs"): client.get(f"/jobs/{unknown}/logs").status_code,
        ("post", "/jobs"): client.post("/jobs", data="<x/>", content_type="application/xml").status_code,
        ("get", "/status"): client.get("/status").status_code,
        ("post", "/upload"): client.post("/upload", data=b"not a tar").status_code,
    }
    for (method, path), status in provoked.items():
        assert str(status) in paths[path][method]["responses"], (method, path, status)


def test_the_workflow_body_is_declared_once(client, remote_samples):
    document = client.get("/openapi.json").get_json()
    schema = document["components"]["schemas"]["Workflow"]
    assert set(schema["properties"]) == WORKFLOW.keys
    assert schema["required"] == list(WORKFLOW.required) and schema["additionalProperties"] is False
    body = {"name": "x", "files": [remote_samples["signal"]], "labels": [1], "model": {}, "colour": "red"}
    answer = client.post("/jobs", json=body).get_json()
    assert answer["status"] == 400 and "colour" in answer["error"]
    for field in sorted(WORKFLOW.keys):
        assert field in answer["error"]  # the known fields are named from the same declaration
