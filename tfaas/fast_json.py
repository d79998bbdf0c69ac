"""Decoding a predict body's numbers straight into a NumPy array, for the fast lane (``tfaas.fastlane``).

A 1024-row batch of the benchmark model is 870 KB of JSON. Decoding it into Python floats (orjson) and then
into an array (``np.array``) costs more than running the MLP on it. simdjson parses the document once and
copies the numbers of ``values`` into one float64 buffer, with no Python object per number, which becomes the
float32 matrix the model takes. For small bodies (a few rows) orjson is faster: the checks below cost a fixed
~20 us, while orjson needs 4 us for one row, so bodies under ``SMALL_BODY_BYTES`` (the crossover measured for
42 features) are decoded by orjson.

The same holds for TF Serving's ``instances``/``inputs`` matrices (:class:`ValuesDecoder` with other keys) and
for the flat ``data`` of a KServe v2 request with one input (:class:`InferDecoder`).

The contract: what ``decode`` returns is the body as the reference decoder (orjson) reads it, except that the
one array of numbers is a float32 NumPy array holding exactly the float32 numbers that ``np.array`` of
orjson's lists would give. A body for which that is not proven here (duplicate members, booleans or nulls
among the numbers, ragged rows, numbers that NumPy may round differently, anything unusual) gives None, and
the caller hands it to the reference path, which also words every error.
"""

from __future__ import annotations

import threading
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


class ValuesDecoder:
    """Decodes bodies whose numbers are one top-level member: ``values`` of ``/json`` (the default), or
    ``instances``/``inputs`` of TF Serving. One per app and protocol, shared by its request threads.

    Its simdjson parser serves one thread at a time. That costs no parallelism, since parsing holds the GIL,
    and the one parser's buffers stay in the CPU cache: with a parser per thread (gunicorn's pool hands
    requests to its eight threads in turn) each request found its buffers cold, which cost more CPU than
    the parsing itself.
    """

    def __init__(
        self,
        keys: tuple[str, ...] = ("values",),
        strings: tuple[str, ...] = ("model",),
        excluded: tuple[str, ...] = ("raw", "events"),
    ) -> None:
        """``keys``: the members that may hold the numbers (exactly one must be there); ``strings``: members
        that must be there as strings; ``excluded``: members that send the body to the reference path."""
        self._keys = keys
        self._strings = strings
        self._excluded = frozenset(excluded)
        self._parser = simdjson.Parser()
        self._lock = threading.Lock()

    def decode(self, body: bytes) -> dict[str, Any] | None:
        """The body with its numbers as a float32 array, or None to leave the body to the reference path."""
        if len(body) < SMALL_BODY_BYTES:
            return self._decode_small(body)
        if len(body) > REUSED_PARSER_MAX_BYTES:
            return _parse(simdjson.Parser(), body, self._decode)
        with self._lock:
            return _parse(self._parser, body, self._decode)

    def _decode_small(self, body: bytes) -> dict[str, Any] | None:
        try:
            document = orjson.loads(body)
        except ValueError:
            return None
        if not isinstance(document, dict) or not self._excluded.isdisjoint(document):
            return None
        if sum(key in document for key in self._keys) != 1:
            return None
        if not all(isinstance(document.get(name), str) for name in self._strings):
            return None
        return document

    def _decode(self, body: bytes, document: Any) -> dict[str, Any] | None:
        names = list(document.keys())
        present = set(names)
        given = [key for key in self._keys if key in present]
        if len(present) != len(names) or len(given) != 1 or not self._excluded.isdisjoint(present):
            return None
        (key,) = given
        values = document[key]
        if not isinstance(values, simdjson.Array):
            return None
        if not all(isinstance(document.get(name), str) for name in self._strings):
            return None
        if isinstance(document.get("version"), simdjson.Array | simdjson.Object):  # the reference refuses it
            return None
        members: dict[str, Any] = {}
        other_arrays = _arrays_outside_values(document, names, key, members)
        if other_arrays is None:
            return None
        flat = _float32_numbers(values)
        if flat is None:
            return None
        # as_buffer flattens nested arrays, so the row structure is checked by counting '[' bytes: once every
        # other '[' of the body is accounted for, the numbers may hold only their own (one row) or their own
        # and one per row (a batch), which rules out deeper nesting. Numbers cannot contain '['.
        own_brackets = _count_byte(body, b"[") - other_arrays
        rows = len(values)
        if own_brackets == 1:
            return {**members, key: flat}
        if own_brackets != 1 + rows:
            return None
        lengths = np.fromiter(map(len, values), dtype=np.intp, count=rows)  # TypeError if a row is a number
        if not (lengths == lengths[0]).all():
            return None
        return {**members, key: flat.reshape(rows, int(lengths[0]))}


class InferDecoder:
    """Decodes a KServe v2 JSON inference request with one input whose ``data`` is a flat list of numbers.

    The other members (``id``, ``outputs``, ``parameters``, and the input's ``name``, ``shape``,
    ``datatype``, ``parameters``) are read by orjson from simdjson's copy of their text, so they are what the
    reference decoder gives; ``data`` becomes the float64 array that ``np.asarray`` of its list would be.
    """

    def __init__(self) -> None:
        self._parser = simdjson.Parser()
        self._lock = threading.Lock()

    def decode(self, body: bytes) -> dict[str, Any] | None:
        if len(body) < SMALL_BODY_BYTES:
            try:
                document = orjson.loads(body)
            except ValueError:
                return None
            return document if isinstance(document, dict) else None
        if len(body) > REUSED_PARSER_MAX_BYTES:
            return _parse(simdjson.Parser(), body, _decode_infer)
        with self._lock:
            return _parse(self._parser, body, _decode_infer)


def _parse(parser: Any, body: bytes, decode: Any) -> dict[str, Any] | None:
    # A parser may parse again only once nothing refers to its last document: nothing returned from here
    # holds a simdjson object.
    try:
        document = parser.parse(body)
    except (ValueError, RuntimeError):  # invalid JSON or UTF-8, integers beyond 64 bits
        return None
    if not isinstance(document, simdjson.Object):
        return None
    try:
        return decode(body, document)
    except (TypeError, ValueError, RuntimeError, KeyError):  # a member of an unexpected type
        return None


def _float32_numbers(values: Any) -> np.ndarray | None:
    """Every number of a (possibly nested) array, flattened, as float32; None unless that is exact."""
    numbers = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64)  # TypeError on non-numbers
    if numbers.size == 0:
        return None
    with np.errstate(over="ignore"):
        flat = numbers.astype(np.float32)
    # Rounding is monotonic, so this refuses every float64 beyond the limit (and infinities) in one pass
    # over half the bytes.
    if flat.max() >= EXACT_INTEGER_LIMIT or flat.min() <= -EXACT_INTEGER_LIMIT:
        return None
    return flat


def _arrays_outside_values(document: Any, names: list[str], key: str, members: dict[str, Any]) -> int | None:
    """How many '[' bytes the members other than ``key`` hold: one per array of scalars, such as the
    ``keys`` that original TFaaS clients send; those members are copied into ``members``. None when that
    cannot be told exactly from decoded values: a '[' inside a string may have been sent escaped
    (``\\u005b``), so such strings are refused."""
    arrays = 0
    for name in names:
        if "[" in name:
            return None
        if name == key:
            continue
        member = document[name]
        if isinstance(member, simdjson.Array):
            items = member.as_list()
            if not all(isinstance(item, SCALARS) for item in items):
                return None
            if any(isinstance(item, str) and "[" in item for item in items):
                return None
            arrays += 1
            member = items
        elif isinstance(member, simdjson.Object) or (isinstance(member, str) and "[" in member):
            return None
        members[name] = member
    return arrays


def _decode_infer(body: bytes, document: Any) -> dict[str, Any] | None:
    inputs = document["inputs"]  # KeyError: none
    if (
        not isinstance(inputs, simdjson.Array)
        or len(inputs) != 1
        or not isinstance(inputs[0], simdjson.Object)
    ):
        return None
    tensor = inputs[0]
    data = tensor["data"]
    if not isinstance(data, simdjson.Array):
        return None
    arrays = 1  # the inputs list
    members = _members(document, "inputs")
    tensor_members = _members(tensor, "data")
    if members is None or tensor_members is None:
        return None
    arrays += members[1] + tensor_members[1]
    if _count_byte(body, b"[") - arrays != 1:  # data holds no array: it is flat
        return None
    numbers = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)  # TypeError on non-numbers
    # np.asarray of orjson's list is float64 when one number is not an integer, and int64 when all are;
    # raw branches are normalised in that dtype, so only the float64 case is the reference's exactly.
    if numbers.size == 0 or (np.modf(numbers)[0] == 0).all():
        return None
    return {**members[0], "inputs": [{**tensor_members[0], "data": numbers}]}


def _members(document: Any, skipped: str) -> tuple[dict[str, Any], int] | None:
    """The object's members but one, as orjson reads them, and how many arrays they hold; None if a name or
    string holds '[' (it may have been escaped) or a name is repeated."""
    names = list(document.keys())
    if len(set(names)) != len(names):
        return None
    members: dict[str, Any] = {}
    arrays = 0
    for name in names:
        if name == skipped:
            continue
        member = document[name]
        value = orjson.loads(member.mini) if isinstance(member, simdjson.Array | simdjson.Object) else member
        count = _arrays_in(value)
        if "[" in name or count is None:
            return None
        members[name] = value
        arrays += count
    return members, arrays


def _arrays_in(value: Any) -> int | None:
    """The number of arrays in a decoded value; None if a name or string in it holds '['."""
    if isinstance(value, str):
        return None if "[" in value else 0
    if isinstance(value, list):
        counts = [_arrays_in(item) for item in value]
        return None if None in counts else 1 + sum(counts)  # type: ignore[arg-type]
    if isinstance(value, dict):
        if any("[" in name for name in value):
            return None
        counts = [_arrays_in(item) for item in value.values()]
        return None if None in counts else sum(counts)  # type: ignore[arg-type]
    return 0


def _count_byte(data: bytes, byte: bytes) -> int:
    """``data.count(byte)``, four times faster on large bodies (bytes.count walks one byte at a time)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == ord(byte)))
