"""The TFaaS app factory: it only assembles the parts.

Settings, the model store and its data plane (``tfaas.dataplane``), metrics, the one JSON error body
(``servicecore.http``), identity (``tfaas.identity``), one blueprint per protocol (``tfaas.protocols``) and
the fast lane (``tfaas.fastlane``). Every error is ``{"error": message, "status": N}``, with a 4xx for bad
input: bad input never gives a 500.
"""

from __future__ import annotations

from flask import Flask

from servicecore.http import install_error_handlers
from tfaas.bodylimit import BoundedRequest
from tfaas.dataplane import DataPlane
from tfaas.fastlane import FastLane, LaneIdentity
from tfaas.identity import install_auth, public_paths
from tfaas.metrics import Metrics
from tfaas.predictor import ModelStore
from tfaas.protocols import kserve, original, service, tfserving
from tfaas.settings import Settings


def create_app(settings: Settings) -> Flask:
    """Build the app from one settings object; every worker calls this once after the fork."""
    app = Flask(__name__)
    app.request_class = BoundedRequest  # a chunked body above the limit is a 413, not cut and parsed
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    metrics = Metrics()
    store = ModelStore(settings, on_batch=metrics.batch_rows.observe, on_change=metrics.loaded_models.set)
    plane = DataPlane(store, settings.max_batch_rows)
    app.extensions["tfaas"] = plane
    if settings.preload:
        store.start_loading()
    else:
        store.ready.set()
    for blueprint in (
        original.blueprint(plane, settings.base),
        tfserving.blueprint(plane, settings.base),
        kserve.blueprint(plane, settings.base),
        service.blueprint(plane, settings.base, metrics),
    ):
        app.register_blueprint(blueprint)
    service.count_requests(app, metrics)
    install_error_handlers(app)
    install_auth(app, settings)
    # The lane runs before Flask's auth hook: it checks the caller as the hook does, with the hook's verifier.
    hook = app.extensions["auth_settings"], app.extensions["auth"]
    identity = LaneIdentity(*hook, public_paths(settings))
    app.wsgi_app = FastLane(app.wsgi_app, plane, settings, metrics, identity)  # type: ignore[method-assign]
    return app
