"""A body of unknown length (``Transfer-Encoding: chunked``) counted against the body limit: 413 above it.

Werkzeug reads such a body through a ``LimitedStream`` whose limit is ``max_content_length``, and stops
there without a word: a chunked body above the limit was cut at the limit and parsed, and a JSON document
followed by padding passed. Here the stream is allowed one byte more than the limit, and reading that byte
raises ``RequestEntityTooLarge``, answered by the one error body (``servicecore.http``). Bodies with a
``Content-Length`` are unchanged: werkzeug refuses those above the limit before reading them.
"""

from __future__ import annotations

from typing import IO

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_content_length


class _AtMost(LimitedStream):
    """Reads at most ``limit`` bytes; one byte more is a 413."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__(stream, limit + 1, is_max=True)
        self._max = limit

    def readinto(self, buffer: bytearray) -> int | None:  # type: ignore[override]
        size = super().readinto(buffer)
        if self._pos > self._max:
            raise RequestEntityTooLarge()
        return size


class BoundedRequest(Request):
    """Flask's request, with a chunked body counted against ``max_content_length``."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        if (
            limit is not None
            and not self.shallow
            and get_content_length(self.environ) is None
            and self.environ.get("wsgi.input_terminated")
        ):
            return _AtMost(self.environ["wsgi.input"], limit)
        return super().stream
