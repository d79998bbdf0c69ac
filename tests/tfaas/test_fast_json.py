"""The fast /json decoder gives exactly the reference decoder's numbers, or leaves the body to it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest

from tfaas.fast_json import SMALL_BODY_BYTES, InferDecoder, ValuesDecoder

RNG = np.random.default_rng(11)
DECODER = ValuesDecoder()
# A member that only makes the body large enough for the simdjson path; it holds no '['.
PAD = {"comment": "x" * SMALL_BODY_BYTES}


def body_of(document: dict, pad: bool = True) -> bytes:
    return json.dumps({**document, **(PAD if pad else {})}).encode()


def reference(body: bytes) -> np.ndarray:
    return np.asarray(np.array(orjson.loads(body)["values"]), dtype=np.float32)


def decoded_float32(body: bytes) -> np.ndarray:
    decoded = DECODER.decode(body)
    assert decoded is not None
    return np.asarray(np.array(decoded["values"]), dtype=np.float32)


@pytest.mark.parametrize("pad", [False, True], ids=["orjson", "simdjson"])
@pytest.mark.parametrize(
    "values",
    [
        RNG.normal(size=(300, 7)).tolist(),
        RNG.uniform(size=(2, 3)).astype(np.float32).tolist(),
        RNG.normal(size=40).tolist(),
        [[1, 2, 3], [-4, 5, 6]],
        [1e-45, -0.0, 1.5e-300, 123456789.123456789, -9e15],
        [[2**52 + 1, 1], [-(2**52), 0.5]],
    ],
    ids=["batch", "float32-text", "one-row", "integers", "extremes", "large-exact-integers"],
)
def test_numbers_are_those_of_the_reference_decoder(values: list, pad: bool) -> None:
    body = body_of({"model": "m", "values": values, "version": 2, "keys": ["a", "b"]}, pad)
    decoded = DECODER.decode(body)
    assert decoded is not None
    assert (decoded["model"], decoded["version"]) == ("m", 2)
    got, want = decoded_float32(body), reference(body)
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_large_bodies_take_the_simdjson_path() -> None:
    body = body_of({"model": "m", "values": [[1.5, 2.5]] * 10})
    decoded = DECODER.decode(body)
    assert decoded is not None and isinstance(decoded["values"], np.ndarray)
    assert decoded["values"].shape == (10, 2)


@pytest.mark.parametrize(
    "body",
    [
        # Nested arrays whose flattened numbers fit the rows' lengths: only the bracket count tells.
        body_of({"model": "m", "values": [[1, [2]], [3, 4]]}),
        body_of({"model": "m", "values": [[1, []], [[2, 3], 4]]}),
        body_of({"model": "m", "values": [1, [[2, 3]]]}),
        # An escaped '[' elsewhere could hide a nested array from the count.
        json.dumps({**PAD, "model": "m", "keys": ["\\u005b"], "values": [[1, [2]], [3, 4]]})
        .replace("\\\\u005b", "\\u005b")
        .encode(),
        body_of({"model": "m[1]", "values": [[1, 2], [3, 4]]}),
        body_of({"model": "m", "values": [[1, 2], [3]]}),
        body_of({"model": "m", "values": [[True, 2], [3, 4]]}),
        body_of({"model": "m", "values": [[None, 2], [3, 4]]}),
        body_of({"model": "m", "values": [[1, "2"], [3, 4]]}),
        body_of({"model": "m", "values": [[1, 2], {"a": 3}]}),
        body_of({"model": "m", "values": [[2**53 + 2, 1], [3, 4]]}),
        body_of({"model": "m", "values": [[2**64, 1], [3, 4]]}),
        body_of({"model": "m", "values": [[3.4e38, 1], [3, 4]]}),
        body_of({"model": "m", "values": []}),
        body_of({"model": "m", "values": [[], []]}),
        body_of({"model": "m", "values": 5}),
        body_of({"model": 5, "values": [1, 2]}),
        body_of({"values": [1, 2]}),
        body_of({"model": "m", "values": [1, 2], "raw": {}}),
        body_of({"model": "m", "values": [1, 2], "extra": {"nested": [1]}}),
        body_of({"model": "m", "values": [1, 2], "keys": [["a"]]}),
        b'{"model": "m", "values": [1, 2], "values": [3, 4], "comment": "' + b"x" * SMALL_BODY_BYTES + b'"}',
        b'{"model": "m", "values": [1, NaN], "comment": "' + b"x" * SMALL_BODY_BYTES + b'"}',
        b'{"model": "m", "values": [1, 1e400], "comment": "' + b"x" * SMALL_BODY_BYTES + b'"}',
        b'{"model": "m", "values": [1, 2], "comment": "' + b"x" * SMALL_BODY_BYTES,
        b"[" * SMALL_BODY_BYTES,
        b"\xff" * SMALL_BODY_BYTES,
    ],
    ids=[
        "nested-one-element",
        "nested-compensating",
        "number-then-nested-row",
        "escaped-bracket-elsewhere",
        "bracket-in-a-string",
        "ragged",
        "boolean",
        "null",
        "string",
        "object-row",
        "inexact-integer",
        "beyond-64-bits",
        "large-float",
        "empty",
        "empty-rows",
        "not-an-array",
        "model-not-a-string",
        "no-model",
        "raw-too",
        "nested-extra-member",
        "nested-keys",
        "duplicate-values",
        "nan",
        "beyond-float64",
        "truncated",
        "not-an-object",
        "not-utf8",
    ],
)
def test_bodies_it_cannot_vouch_for_go_to_the_reference_path(body: bytes) -> None:
    assert len(body) >= SMALL_BODY_BYTES
    assert DECODER.decode(body) is None


def test_the_escaped_bracket_case_really_is_escaped() -> None:
    body = json.dumps({**PAD, "model": "m", "keys": ["\\u005b"], "values": [[1, [2]], [3, 4]]}).replace(
        "\\\\u005b", "\\u005b"
    )
    assert orjson.loads(body)["keys"] == ["["]
    # Without the escape check, the decoded '[' would be counted and the nesting would pass unseen.
    assert body.encode().count(b"[") == 1 + 1 + 2 + 1


def test_the_parser_is_reused_after_refused_and_accepted_bodies() -> None:
    decoder = ValuesDecoder()
    good = body_of({"model": "m", "values": [[1.0, 2.0], [3.0, 4.0]]})
    # The results are kept: one that held a simdjson object would make the parser refuse to parse again.
    kept = [
        decoder.decode(body)
        for body in (
            good,
            body_of({"model": "m", "values": [[1, 2], [3]]}),  # refused after rows were looked at
            body_of({"model": "m", "values": [[1, 2], [3, 4]], "version": [1]}),  # a version that is an array
            b'{"model": "m", "values": [1, NaN], "comment": "' + b"x" * SMALL_BODY_BYTES + b'"}',
            good,
        )
    ]
    assert [result is None for result in kept] == [False, True, True, True, False]
    decoded = decoder.decode(good)
    assert decoded is not None
    assert decoded["values"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_threads_decode_side_by_side() -> None:
    decoder = ValuesDecoder()
    bodies = [body_of({"model": f"m{i}", "values": [[float(i)] * 3] * 50}) for i in range(8)]

    def decode(i: int) -> tuple[str, float]:
        decoded = decoder.decode(bodies[i])
        assert decoded is not None
        return decoded["model"], float(decoded["values"].sum())

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(decode, [i % 8 for i in range(200)]))
    assert results == [(f"m{i % 8}", 150.0 * (i % 8)) for i in range(200)]


# -- TF Serving's instances/inputs and KServe v2's data --

TF_DECODER = ValuesDecoder(keys=("instances", "inputs"), strings=(), excluded=())
INFER_DECODER = InferDecoder()


@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_tf_serving_matrices_are_those_of_the_reference_decoder(key: str) -> None:
    rows = RNG.normal(size=(300, 5)).tolist()
    body = body_of({key: rows, "signature_name": "serving_default"}, pad=False)
    assert len(body) >= SMALL_BODY_BYTES
    decoded = TF_DECODER.decode(body)
    assert decoded is not None and decoded["signature_name"] == "serving_default"
    assert isinstance(decoded[key], np.ndarray)
    want = np.asarray(np.array(orjson.loads(body)[key]), dtype=np.float32)
    assert np.array_equal(decoded[key], want)


def test_tf_serving_bodies_with_both_keys_go_to_the_reference_path() -> None:
    rows = RNG.normal(size=(300, 5)).tolist()
    assert TF_DECODER.decode(body_of({"instances": rows, "inputs": rows}, pad=False)) is None
    assert TF_DECODER.decode(body_of({"rows": rows})) is None


def infer_body(data: object, **extra: object) -> bytes:
    tensor = {"name": "inputs", "shape": [300, 5], "datatype": "FP32", "data": data}
    return json.dumps({"id": "r", "inputs": [tensor], **extra}).encode()


def test_kserve_data_is_that_of_the_reference_decoder() -> None:
    data = RNG.normal(size=1500).tolist()
    body = infer_body(data, outputs=[{"name": "outputs", "parameters": {"binary_data": False}}])
    assert len(body) >= SMALL_BODY_BYTES
    decoded = INFER_DECODER.decode(body)
    assert decoded is not None
    reference = orjson.loads(body)
    tensor = decoded["inputs"][0]
    assert isinstance(tensor["data"], np.ndarray)
    assert np.array_equal(tensor["data"], np.asarray(reference["inputs"][0]["data"]))
    assert tensor["data"].dtype == np.asarray(reference["inputs"][0]["data"]).dtype
    assert {k: v for k, v in tensor.items() if k != "data"} == {
        k: v for k, v in reference["inputs"][0].items() if k != "data"
    }
    assert {k: v for k, v in decoded.items() if k != "inputs"} == {
        k: v for k, v in reference.items() if k != "inputs"
    }


@pytest.mark.parametrize(
    "body",
    [
        infer_body(RNG.normal(size=(300, 5)).tolist()),  # nested data
        infer_body(RNG.integers(10000, 99999, size=3000).tolist()),  # all integers: np.asarray gives int64
        infer_body([*RNG.normal(size=1499).tolist(), [1.0]]),  # a nested array among numbers
        infer_body(RNG.normal(size=1500).tolist(), id="\\u005b").replace(b"\\\\u005b", b"\\u005b"),
        infer_body([*RNG.normal(size=1499).tolist(), True]),
        json.dumps({"inputs": [{"data": RNG.normal(size=1500).tolist()}] * 2}).encode(),  # two inputs
        b'{"inputs": [{"data": [1.5]}], "inputs": [{"data": [2.5]}], "pad": "'
        + b"x" * SMALL_BODY_BYTES
        + b'"}',
    ],
    ids=[
        "nested",
        "integers",
        "mixed-depth",
        "bracket-in-string",
        "boolean",
        "two-inputs",
        "duplicate-inputs",
    ],
)
def test_kserve_bodies_it_cannot_vouch_for_go_to_the_reference_path(body: bytes) -> None:
    assert len(body) >= SMALL_BODY_BYTES
    assert INFER_DECODER.decode(body) is None
