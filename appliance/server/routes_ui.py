"""The physicist's web page: ``/ui/``, plain HTML and a little JavaScript (``appliance/server/ui/``).

The page and its static files are public (they hold no data); every call the page makes goes to the API
itself, with the caller's identity: the bearer token the page keeps in sessionStorage, or, behind
oauth2-proxy, the browser's session cookie, from which the proxy forwards the token. The caller's models in
TFaaS come through ``/tfaas/models``: the server calls TFaaS's ``/models`` at ``tfaas_url`` with the caller's
own token, so the browser talks to one origin only (no CORS) and TFaaS still decides what the token may see.
"""

from __future__ import annotations

from pathlib import Path

import flask
import requests
from flask import Response, request

from appliance.server.context import json_response, settings
from appliance.server.identity import current_owner
from appliance.server.openapi import json_content, operation, path_parameter
from servicecore.errors import NotFoundError
from servicecore.naming import owns

UI_DIR = Path(__file__).with_name("ui")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
TFAAS_TIMEOUT_S = 10
# Only the page's own files run; plots arrive as blob: URLs (fetched with the token); no framing.
CONTENT_POLICY = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)
MODELS_ANSWER = {
    "description": "tfaas: the TFaaS asked; models: your models with their versions; error: why none came",
    "content": json_content(
        {
            "type": "object",
            "properties": {
                "tfaas": {"type": "string"},
                "models": {"type": "array", "items": {"type": "object"}},
                "error": {"type": "string", "nullable": True},
            },
        }
    ),
}
PAGE_ANSWER = {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}


def blueprint() -> flask.Blueprint:
    bp = flask.Blueprint("ui", __name__)

    @bp.get("/ui")
    @operation("the web page (redirects to /ui/)", {308: {"description": "to /ui/"}})
    def page_redirect() -> Response:
        return flask.redirect("/ui/", code=308)

    @bp.get("/ui/")
    @operation("the web page: your jobs, their logs, plots and downloads, your models", {200: PAGE_ANSWER})
    def page() -> Response:
        return _static("index.html")

    @bp.get("/ui/<name>")
    @operation(
        "the page's script and style (and the page itself as index.html)",
        {
            200: {
                "description": "the file",
                "content": {kind: {} for kind in sorted(set(STATIC_FILES.values()))},
            }
        },
        errors=(404,),
        parameters=[path_parameter("name", enum=sorted(STATIC_FILES))],
    )
    def page_file(name: str) -> Response:
        return _static(name)

    @bp.get("/tfaas/models")
    @operation("your models in TFaaS and their versions (TFaaS asked with your token)", {200: MODELS_ANSWER})
    def tfaas_models() -> Response:
        return json_response(_tfaas_models(current_owner()))

    return bp


def _static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise NotFoundError(f"no file {name!r} in the web page")
    response = flask.send_file(UI_DIR / name, mimetype=STATIC_FILES[name], max_age=0)
    response.headers["Content-Security-Policy"] = CONTENT_POLICY
    return response


def _tfaas_models(owner: str) -> dict:
    """The caller's models in TFaaS; a TFaaS that is not set, down or refusing is said, not an error of
    this call: the page shows the jobs all the same."""
    url = settings().tfaas_url.rstrip("/")
    answer: dict = {"tfaas": url, "models": [], "error": None}
    if not url:
        answer["error"] = "no TFaaS is set for this server (tfaas_url)"
        return answer
    token = _caller_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        reply = requests.get(f"{url}/models", headers=headers, timeout=TFAAS_TIMEOUT_S)
    except requests.RequestException as err:
        answer["error"] = f"TFaaS at {url} did not answer: {type(err).__name__}"
        return answer
    if reply.status_code != 200:
        answer["error"] = f"TFaaS answered HTTP {reply.status_code}: {_message(reply)}"
        return answer
    listing = reply.json() if reply.headers.get("Content-Type", "").startswith("application/json") else None
    if not isinstance(listing, list):
        answer["error"] = "TFaaS's /models did not answer a JSON list"
        return answer
    mine = [m for m in listing if isinstance(m, dict) and owns(owner, str(m.get("name", "")))]
    answer["models"] = [
        {"name": m["name"], "version": m.get("version"), "versions": m.get("versions", [])} for m in mine
    ]
    return answer


def _caller_token() -> str | None:
    """The token this request came with: its bearer token, or the one oauth2-proxy forwarded."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Forwarded-Access-Token") or None


def _message(reply: requests.Response) -> str:
    try:
        return str(reply.json().get("error", ""))[:300]
    except (ValueError, AttributeError):
        return reply.text[:300]
