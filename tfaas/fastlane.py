"""The fast lane: WSGI middleware that answers successful predict requests of every protocol without Flask.

Flask's request machinery costs several times what the NumPy engine needs to run a small MLP, and
single-row requests are what clients of the original TFaaS send. The lane serves ``/json``, TF
Serving's ``:predict`` and KServe v2's ``/infer`` (JSON and binary tensors) by calling the very functions
the Flask views call (``tfaas.protocols``) on the body as the reference decoder reads it, or as
``tfaas.fast_json`` decodes it where that is proven to give the same numbers. It answers only a
well-formed request that succeeds. Anything else (a body of unknown length, a content type or path it does
not vouch for, an unknown model, any error) is handed, body intact, to the Flask view, which is the
reference implementation and words every error. So the lane adds speed but no behaviour.

Identity: the lane answers only a caller that Flask's auth hook (``servicecore.auth.install_auth``) would let
through, checked by ``LaneIdentity`` with the same verifier object, the same public paths and the same
demo-mode rules. A caller it cannot vouch for (no token, a bad one, one outside the policy, the identity
provider out of reach) is handed to Flask, whose hook answers the 401/403/503 with its own words: the lane
never words a refusal, so its refusals cannot differ from the view's.
"""

from __future__ import annotations

import fnmatch
import io
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import flask
import orjson

from servicecore import auth
from tfaas.dataplane import DataPlane
from tfaas.fast_json import InferDecoder, ValuesDecoder
from tfaas.metrics import Metrics
from tfaas.protocols import kserve, original, tfserving
from tfaas.protocols.common import JSON_TYPES
from tfaas.settings import Settings

# (headers, body) of a 200 answer, or None to hand the request to Flask.
Answer = tuple[list[tuple[str, str]], bytes] | None
BINARY_HEADER_ENVIRON = "HTTP_" + kserve.BINARY_HEADER.upper().replace("-", "_")


def _json_answer(payload: bytes) -> Answer:
    return [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))], payload


def _is_json_type(mimetype: str) -> bool:
    """What ``servicecore.http.json_body`` takes by default: application/json and any +json type."""
    return mimetype == "application/json" or mimetype.endswith("+json")


def _reference_decode(body: bytes) -> dict[str, Any] | None:
    """The body as ``json_body`` reads it (orjson), when it is a JSON object."""
    try:
        document = orjson.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


class LaneIdentity:
    """Whether the auth hook would let a request through: True only when it surely would.

    ``verifier`` is the very ``TokenVerifier`` the hook uses (``app.extensions["auth"]``), so both share the
    issuers' key caches; ``public`` and ``loopback`` are the hook's own patterns.
    """

    def __init__(
        self,
        settings: auth.AuthSettings,
        verifier: auth.TokenVerifier | None,
        public: Iterable[str],
        loopback: Iterable[str] = (),
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._public = (*public, *settings.public_paths)
        self._loopback = (*loopback, *settings.loopback_paths)

    def admits(self, environ: dict[str, Any]) -> bool:
        request = flask.Request(environ)  # headers are read lazily from the environ; the body is untouched
        path = request.path
        if _matches(path, self._public) or (_matches(path, self._loopback) and _loopback_direct(request)):
            return True
        if self._verifier is None:
            return self._demo_admits(request)
        token = auth.bearer_token(request)
        if token is None:
            return False
        try:
            self._verifier.verify(token)
        except Exception:  # refusals and IssuerUnavailableError: the hook answers them, in its words
            return False
        return True

    def _demo_admits(self, request: flask.Request) -> bool:
        if self._settings.mode == auth.LOCAL_DEMO:
            return True
        name = auth.forwarded_user(request)
        if name is None:
            return _loopback_direct(request)
        return len(name) <= auth.MAX_USERNAME_LENGTH and name.isprintable()


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _loopback_direct(request: flask.Request) -> bool:
    """As the hook decides it: on loopback and not forwarded by oauth2-proxy."""
    if request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded"):
        return False
    return auth.is_loopback_address(request.remote_addr or "")


class FastLane:
    def __init__(
        self, app: Any, plane: DataPlane, settings: Settings, metrics: Metrics, identity: LaneIdentity
    ) -> None:
        self._app = app
        self._identity = identity
        self._plane = plane
        self._max_body = settings.max_body_bytes
        self._metrics = metrics
        self._values = ValuesDecoder()
        self._tf_values = ValuesDecoder(keys=("instances", "inputs"), strings=(), excluded=())
        self._infer = InferDecoder()
        base = settings.base
        self._exact = {f"{base}/json": "json", f"{base}/predict/json": "predict_json"}
        # The same matches as the Flask rules: a path segment (werkzeug's default converter) per name.
        tf_serving = re.escape(base) + r"/v1/models/([^/]+)(?:/versions/([^/]+))?:predict"
        kserve_infer = re.escape(base) + r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer"
        self._patterns: list[tuple[re.Pattern[str], str, Callable[..., Answer]]] = [
            (re.compile(tf_serving), "tf_predict", self._tf_predict),
            (re.compile(kserve_infer), "infer", self._kserve_infer),
        ]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") != "POST":
            return self._app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        route = self._route(path)
        if route is None:
            return self._app(environ, start_response)
        endpoint, handler, arguments = route
        started = time.perf_counter()
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if not 0 <= length <= self._max_body:  # chunked bodies are counted against the limit by Flask
            return self._app(environ, start_response)
        if not self._identity.admits(environ):
            return self._app(environ, start_response)
        body = environ["wsgi.input"].read(length)
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        try:
            answer = handler(body, mimetype, environ, *arguments)
        except Exception:  # the Flask view repeats the request and answers the error properly
            answer = None
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self._app(environ, start_response)
        headers, payload = answer
        start_response("200 OK", headers)
        self._metrics.observe(endpoint, "POST", 200, time.perf_counter() - started)
        return [payload]

    def _route(self, path: str) -> tuple[str, Callable[..., Answer], tuple[str | None, ...]] | None:
        endpoint = self._exact.get(path)
        if endpoint is not None:
            return endpoint, self._original_json, ()
        if not path.isascii():  # werkzeug decodes such names from the WSGI string: leave them to it
            return None
        for pattern, name, handler in self._patterns:
            match = pattern.fullmatch(path)
            if match is not None:
                return name, handler, match.groups()
        return None

    def _original_json(self, body: bytes, mimetype: str, environ: dict[str, Any]) -> Answer:
        if mimetype not in JSON_TYPES:
            return None
        document = self._values.decode(body) or _reference_decode(body)
        return None if document is None else _json_answer(original.predict_json(self._plane, document))

    def _tf_predict(
        self, body: bytes, mimetype: str, environ: dict[str, Any], name: str, version: str | None
    ) -> Answer:
        if not _is_json_type(mimetype):
            return None
        document = self._tf_values.decode(body) or _reference_decode(body)
        if document is None:
            return None
        return _json_answer(tfserving.predict(self._plane, name, version, document))

    def _kserve_infer(
        self, body: bytes, mimetype: str, environ: dict[str, Any], name: str, version: str | None
    ) -> Answer:
        header_length = environ.get(BINARY_HEADER_ENVIRON)
        binary = None
        if header_length is not None:
            document, binary = kserve.binary_body(header_length, mimetype, body)
        elif _is_json_type(mimetype):
            document = self._infer.decode(body) or _reference_decode(body)
        else:
            return None
        if document is None:
            return None
        payload, json_length = kserve.infer(self._plane, name, version, document, binary)
        if json_length is None:
            return _json_answer(payload)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(payload))),
            (kserve.BINARY_HEADER, str(json_length)),
        ]
        return headers, payload
