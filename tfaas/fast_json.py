"""Decoding a ``/json`` predict body straight into a NumPy array, for the fast lane of the API.

A 1024-row batch of the benchmark model is 870 KB of JSON. Decoding it into Python floats (orjson) and then
into an array (``np.array``) costs more than running the MLP on it. simdjson parses the document once and
copies the numbers of ``values`` into one float64 buffer, with no Python object per number, which becomes the
float32 matrix the model takes. For small bodies (a few rows) orjson is faster: the checks below cost a fixed
~20 us, while orjson needs 4 us for one row, so bodies under ``SMALL_BODY_BYTES`` (the crossover measured for
42 features) are decoded by orjson.

The contract: what :meth:`ValuesDecoder.decode` returns is exactly what the reference decoder (orjson, then
``np.array``) would have produced. A body for which that is not proven here (duplicate members, booleans or
nulls among the numbers, ragged rows, numbers that NumPy may round differently, anything unusual) gives None,
and the caller hands it to the reference path, which also words every error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

# Integers beyond 2**53 are not exact in float64: NumPy converts an all-integer list to int64 and then to
# float32 in one rounding, while a float64 buffer rounds twice. The buffer does not tell integers from
# floats, so any number of that size goes to the reference path.
EXACT_INTEGER_LIMIT = 2.0**53
SCALARS = (str, int, float, bool, type(None))
SMALL_BODY_BYTES = 16 * 1024
# A parser keeps buffers of about twice the largest body it parsed. Reusing one saves allocating and
# faulting in those buffers on every request (half the decoding time of a 1024-row batch); bodies above this
# size get a parser of their own, so that what a worker keeps stays small.
REUSED_PARSER_MAX_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class ValuesRequest:
    model: str
    version: Any  # as sent: validated by the caller like any other request's version
    values: np.ndarray | list[Any]  # float32 (one dimension for one row, two for a batch) or orjson's lists


class ValuesDecoder:
    """Decodes ``/json`` bodies; one per app, shared by its request threads.

    Its simdjson parser serves one thread at a time. That costs no parallelism, since parsing holds the GIL,
    and the one parser's buffers stay in the CPU cache: with a parser per thread (gunicorn's pool hands
    requests to its eight threads in turn) each request found its buffers cold, which cost more CPU than
    the parsing itself.
    """

    def __init__(self) -> None:
        self._parser = simdjson.Parser()
        self._lock = threading.Lock()

    def decode(self, body: bytes) -> ValuesRequest | None:
        """The model, version and ``values`` of a body, or None to leave the body to the reference path."""
        if len(body) < SMALL_BODY_BYTES:
            return _decode_small(body)
        if len(body) > REUSED_PARSER_MAX_BYTES:
            return _parse_and_decode(simdjson.Parser(), body)
        with self._lock:
            return _parse_and_decode(self._parser, body)


def _parse_and_decode(parser: Any, body: bytes) -> ValuesRequest | None:
    # A parser may parse again only once nothing refers to its last document: nothing returned from here
    # holds a simdjson object.
    try:
        document = parser.parse(body)
    except (ValueError, RuntimeError):  # invalid JSON or UTF-8, integers beyond 64 bits
        return None
    if not isinstance(document, simdjson.Object):
        return None
    try:
        return _decode(body, document)
    except (TypeError, ValueError, RuntimeError, KeyError):  # a member of an unexpected type
        return None


def _decode_small(body: bytes) -> ValuesRequest | None:
    try:
        document = orjson.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or "raw" in document or "events" in document:
        return None
    model, values = document.get("model"), document.get("values")
    if not isinstance(model, str) or values is None:
        return None
    return ValuesRequest(model, document.get("version"), values)


def _decode(body: bytes, document: Any) -> ValuesRequest | None:
    names = list(document.keys())
    present = set(names)
    if len(present) != len(names) or not {"model", "values"} <= present or present & {"raw", "events"}:
        return None
    model, values, version = document["model"], document["values"], document.get("version")
    if not isinstance(model, str) or not isinstance(values, simdjson.Array):
        return None
    if isinstance(version, simdjson.Array | simdjson.Object):  # invalid anyway; the reference path says so
        return None
    other_arrays = _arrays_outside_values(document, names)
    if other_arrays is None:
        return None
    numbers = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64)  # TypeError on non-numbers
    if numbers.size == 0:
        return None
    with np.errstate(over="ignore"):
        flat = numbers.astype(np.float32)
    # Rounding is monotonic, so this refuses every float64 beyond the limit (and infinities) in one pass
    # over half the bytes.
    if flat.max() >= EXACT_INTEGER_LIMIT or flat.min() <= -EXACT_INTEGER_LIMIT:
        return None
    # as_buffer flattens nested arrays, so the row structure is checked by counting '[' bytes: once every
    # other '[' of the body is accounted for, ``values`` may hold only its own (one row) or its own and one
    # per row (a batch), which rules out deeper nesting. Numbers cannot contain '['.
    own_brackets = _count_byte(body, b"[") - other_arrays
    rows = len(values)
    if own_brackets == 1:
        return ValuesRequest(model, version, flat)
    if own_brackets != 1 + rows:
        return None
    lengths = np.fromiter(map(len, values), dtype=np.intp, count=rows)  # TypeError if a row is a number
    if not (lengths == lengths[0]).all():
        return None
    return ValuesRequest(model, version, flat.reshape(rows, int(lengths[0])))


def _arrays_outside_values(document: Any, names: list[str]) -> int | None:
    """How many '[' bytes the members other than ``values`` hold: one per array of scalars, such as the
    ``keys`` that original TFaaS clients send. None when that cannot be told exactly from decoded values:
    a '[' inside a string may have been sent escaped (``\\u005b``), so such strings are refused."""
    arrays = 0
    for name in names:
        if "[" in name:
            return None
        if name == "values":
            continue
        member = document[name]
        if isinstance(member, simdjson.Array):
            items = member.as_list()
            if not all(isinstance(item, SCALARS) for item in items):
                return None
            if any(isinstance(item, str) and "[" in item for item in items):
                return None
            arrays += 1
        elif isinstance(member, simdjson.Object) or (isinstance(member, str) and "[" in member):
            return None
    return arrays


def _count_byte(data: bytes, byte: bytes) -> int:
    """``data.count(byte)``, four times faster on large bodies (bytes.count walks one byte at a time)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == ord(byte)))
