"""The one error hierarchy of both services, and the one JSON body every HTTP error has.

Each class says what went wrong from the caller's side and carries the HTTP status it maps to. Command lines
print the message as one line with exit code 2; both HTTP services answer ``{"error": message, "status": N}``
(docs/errors.md). Anything else that escapes is a bug, answered with a 500 and logged.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """An error whose message is meant for the caller; ``status`` is its HTTP status."""

    status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInputError(ServiceError):
    """Bad input: a missing file, an unknown branch, a malformed body or setting. The message names it."""


class UnauthorizedError(ServiceError):
    """No credentials, or credentials that do not verify."""

    status = 401


class ForbiddenError(ServiceError):
    """A verified caller outside the access policy."""

    status = 403


class NotFoundError(ServiceError):
    """Nothing of that name, or nothing of that name that belongs to the caller."""

    status = 404


class ConflictError(ServiceError):
    """The thing exists but is in the wrong state for the request (a finished job, a model not ready)."""

    status = 409


class PayloadTooLargeError(ServiceError):
    """A body, an upload or an unpacked archive above its stated limit."""

    status = 413


class UnsupportedMediaTypeError(ServiceError):
    """A body in a content type the route does not take."""

    status = 415


class TooManyRequestsError(ServiceError):
    """A bounded resource (log followers, say) is in use by as many as allowed."""

    status = 429


class UnavailableError(ServiceError):
    """A dependency (the identity provider, say) cannot be reached right now."""

    status = 503


class InsufficientStorageError(ServiceError):
    """The caller's disk quota would be exceeded."""

    status = 507


BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls
    for cls in (
        BadInputError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        TooManyRequestsError,
        UnavailableError,
        InsufficientStorageError,
    )
}


def error_for_status(status: int, message: str) -> ServiceError:
    """The error of that HTTP status (for places that only know a status, such as auth refusals)."""
    cls = BY_STATUS.get(status)
    if cls is None:
        raise ValueError(f"no error class for HTTP status {status}")
    return cls(message)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The one JSON error body of both services."""
    return {"error": message, "status": status}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, naming the culprit"},
        "status": {"type": "integer", "description": "the HTTP status, repeated"},
    },
}
