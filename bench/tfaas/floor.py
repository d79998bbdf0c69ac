"""The HTTP floor of the TFaaS benchmark: a bare WSGI app that parses the request's JSON and returns a constant.

Served by gunicorn with the same worker class, workers and threads as TFaaS, it measures what HTTP, gunicorn
and JSON decoding cost before any model runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

ANSWER = b"[0.5]"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length))
    if not isinstance(body, dict) or "values" not in body:
        start_response("400 Bad Request", [("Content-Type", "application/json")])
        return [b'{"error": "no values"}']
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))])
    return [ANSWER]
