"""The fast lane: WSGI middleware that answers successful predict requests without Flask's dispatch.

Flask's request machinery costs several times what the NumPy engine needs to run a small MLP, and
single-row requests are what clients of the original TFaaS send. The lane calls the very functions the Flask
views call (``tfaas.protocols``), on bodies decoded by ``tfaas.fast_json``; it answers only a well-formed
request that succeeds. Anything else (a content type or body it does not vouch for, an unknown model, any
error) is handed, body intact, to the Flask view, which is the reference implementation and words every
error. So the lane adds speed but no behaviour.
"""

from __future__ import annotations

import io
import time
from typing import Any

from tfaas.dataplane import DataPlane
from tfaas.fast_json import ValuesDecoder
from tfaas.metrics import Metrics
from tfaas.protocols import original
from tfaas.protocols.common import JSON_TYPES
from tfaas.settings import Settings


class FastLane:
    def __init__(self, app: Any, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self._app = app
        self._plane = plane
        self._settings = settings
        self._metrics = metrics
        self._decoder = ValuesDecoder()
        self._paths = {f"{settings.base}/json": "json", f"{settings.base}/predict/json": "predict_json"}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        endpoint = self._paths.get(environ.get("PATH_INFO", ""))
        if endpoint is None or environ.get("REQUEST_METHOD") != "POST":
            return self._app(environ, start_response)
        started = time.perf_counter()
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if mimetype not in JSON_TYPES or not 0 <= length <= self._settings.max_body_bytes:
            return self._app(environ, start_response)
        body = environ["wsgi.input"].read(length)
        payload = self._answer(body)
        if payload is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self._app(environ, start_response)
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        )
        self._metrics.observe(endpoint, "POST", 200, time.perf_counter() - started)
        return [payload]

    def _answer(self, body: bytes) -> bytes | None:
        decoded = self._decoder.decode(body)
        if decoded is None:
            return None
        request = {"model": decoded.model, "version": decoded.version, "values": decoded.values}
        try:
            return original.predict_json(self._plane, request)
        except Exception:  # the Flask view repeats the request and answers the error properly
            return None
