"""The MLaaS4HEP HTTP API, built by ``create_app`` from one settings object.

The routes live by group: ``routes_jobs`` (the ``/jobs`` resource), ``routes_prototype`` (the prototype's
upload, submit and status calls), ``routes_downloads`` (logs, model archives, plots); turning a request into
a job is ``submission``'s. Every route declares its OpenAPI operation next to it, and ``/openapi.json`` is
generated from those declarations (``appliance.server.openapi``). Every error is the one JSON body
``{"error": message, "status": code}`` with a 4xx status; only a bug answers 500, also as JSON.
"""

from __future__ import annotations

import contextlib

import flask
from flask import Flask, Response

from appliance.server import metrics, routes_downloads, routes_jobs, routes_prototype, routes_ui
from appliance.server.context import SERVER_NAME, json_response
from appliance.server.identity import SETTINGS_KEY, install_auth
from appliance.server.openapi import document, json_content, operation
from appliance.server.queue import JobQueue
from appliance.server.settings import Settings
from servicecore.http import install_error_handlers


def create_app(settings: Settings) -> Flask:
    """The app, configured from one settings object; each gunicorn worker builds its own."""
    app = Flask(SERVER_NAME)
    # The largest body of all (an upload); JSON bodies get their own, smaller limit (submission.json_request).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    for directory in (settings.jobs_dir, settings.uploads_dir, settings.model_repository):
        directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # uploads are nobody else's business, jobs' least of all
        settings.uploads_dir.chmod(0o700)
    app.extensions[SERVER_NAME] = queue = JobQueue(settings)
    queue.announce_front()
    app.register_blueprint(_service_routes())
    app.register_blueprint(metrics.blueprint(queue))
    for group in (routes_jobs, routes_prototype, routes_downloads, routes_ui):
        app.register_blueprint(group.blueprint())
    routes_downloads.install_followers(app)
    install_error_handlers(app)
    app.config[SETTINGS_KEY] = settings
    install_auth(app, settings)
    return app


def openapi_document(app: Flask) -> dict:
    """The OpenAPI 3 document of every route of ``app``."""
    return document(app, {"Job": routes_jobs.JOB_SCHEMA})


def _service_routes() -> flask.Blueprint:
    bp = flask.Blueprint("service", __name__)

    @bp.get("/openapi.json")
    @operation(
        "this document", {200: {"description": "OpenAPI 3", "content": json_content({"type": "object"})}}
    )
    def openapi() -> Response:
        return json_response(openapi_document(flask.current_app))

    return bp
