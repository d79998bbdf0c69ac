"""HTTP helpers both Flask services share: the one JSON error body, JSON request bodies, query numbers.

``install_error_handlers`` turns every ``ServiceError`` (and werkzeug's own HTTP errors) into the one body of
``servicecore.errors``; an exception that is not one is a bug, logged and answered with a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import flask
import orjson
from werkzeug.exceptions import HTTPException

from servicecore.errors import (
    BadInputError,
    ServiceError,
    UnsupportedMediaTypeError,
    error_body,
)

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)


def error_response(status: int, message: str) -> flask.Response:
    """The one error response of both services."""
    return flask.Response(
        orjson.dumps(error_body(status, message)), status=status, mimetype="application/json"
    )


def install_error_handlers(
    app: flask.Flask, extra: Iterable[tuple[type[Exception], int]] = ()
) -> Callable[[int, str], flask.Response]:
    """Answer every error of ``app`` with the one JSON body; ``extra`` maps more exceptions to statuses."""

    @app.errorhandler(ServiceError)
    def service_error(err: ServiceError) -> flask.Response:
        return error_response(err.status, err.message)

    for exception, status in extra:

        def handler(err: Exception, status: int = status) -> flask.Response:
            return error_response(status, str(err))

        app.register_error_handler(exception, handler)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> flask.Response:
        if err.code == 413:
            limit = flask.request.max_content_length
            return error_response(413, f"the request body is too large (the limit is {limit} bytes)")
        return error_response(err.code or 400, err.description or err.name)

    @app.errorhandler(Exception)
    def bug(err: Exception) -> flask.Response:
        log.exception("unexpected error on %s %s", flask.request.method, flask.request.path)
        return error_response(500, "internal error; the server log has the details")

    return error_response


def json_body(accepted_types: Iterable[str] = JSON_TYPES) -> dict:
    """The request's body as a JSON object, or a 400/415 naming what is wrong with it.

    ``accepted_types`` lists the content types taken besides any ``+json`` type. Bodies nested too deep for
    the parser (orjson stops at 1024 levels) are bad input like any other unparsable body.
    """
    mimetype = flask.request.mimetype
    if mimetype not in tuple(accepted_types) and not mimetype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"unsupported content type {mimetype!r}: send application/json")
    try:
        body = orjson.loads(flask.request.get_data(cache=False))
    except (ValueError, RecursionError) as err:
        raise BadInputError(f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadInputError("the body must be a JSON object")
    return body


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``, or a 400 that says the range."""
    text = flask.request.args.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadInputError(f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadInputError(f"{name} must be between {low} and {high}, got {value}")
    return value
