"""The NumPy engine: a frozen dense-layer TensorFlow graph compiled into a short list of NumPy steps.

Calling a TensorFlow signature costs about half a millisecond of framework overhead, more than a small MLP's
arithmetic. When a SavedModel's frozen serving graph is made only of dense-layer operations (MatMul, BiasAdd,
element-wise arithmetic and activations) it is compiled here into NumPy steps, which are checked to give the
same numbers as TensorFlow on random inputs before they are used; any other graph runs in TensorFlow.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit

log = logging.getLogger(__name__)

# Tolerance of the NumPy engine against TensorFlow (float32 arithmetic in another order).
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5
# When TensorFlow may use several threads per worker (tf_threads != 1), its parallel kernels win on large
# batches: above this many rows a call goes to TensorFlow (measured crossover for the benchmark MLP on 2
# cores: about 100 rows). With one thread, the default, NumPy is as fast on any batch and costs less CPU:
# TensorFlow's calling thread keeps spinning while its compute thread works (0.8 ms of CPU per 1024 rows).
NUMPY_MAX_ROWS = 64
# The NumPy engine runs large batches in blocks of this many rows, so that a layer's output stays in the
# CPU cache for the next layer (16k rows in one piece ran at half the speed).
NUMPY_BLOCK_ROWS = 1024


class UnsupportedGraphError(Exception):
    """The graph uses an operation the NumPy engine does not implement: run it in TensorFlow."""


# -- the NumPy engine ------------------------------------------------------------------------------------


# The steps are module-level functions (or partials of them), never lambdas or closures, so that a compiled
# graph pickles: an upload is checked and compiled in a child process that hands the graph over
# (``tfaas.upload_check``).


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0))


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, np.float32(0), np.float32(6))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0), x)


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return np.float32(1) / np.sqrt(x)


def _relu_in_place(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0), out=x)


def _sigmoid_in_place(x: np.ndarray) -> np.ndarray:
    return expit(x, out=x)


def _tanh_in_place(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


def _binary_in_place(ufunc: np.ufunc, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ufunc(x, y, out=x)


def _leaky(slope: np.float32, x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, x * slope)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _selu(x: np.ndarray) -> np.ndarray:
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Relu": _relu,
    "Relu6": _relu6,
    "Sigmoid": expit,
    "Tanh": np.tanh,
    "Softmax": _softmax,
    "Softplus": _softplus,
    "Elu": _elu,
    "Selu": _selu,
    "Exp": np.exp,
    "Log": np.log,
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Rsqrt": _rsqrt,
    "Square": np.square,
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "BiasAdd": np.add,
    "Add": np.add,
    "AddV2": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "RealDiv": np.divide,
    "Maximum": np.maximum,
    "Minimum": np.minimum,
}
PASS_THROUGH = {"Identity", "StopGradient", "Snapshot"}
# The same operations writing into their first operand, used when that operand is a temporary nobody else
# reads: a dense layer then allocates one array (the MatMul's) instead of three.
IN_PLACE_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Relu": _relu_in_place,
    "Sigmoid": _sigmoid_in_place,
    "Tanh": _tanh_in_place,
}
IN_PLACE_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    op: functools.partial(_binary_in_place, BINARY[op])
    for op in ("BiasAdd", "Add", "AddV2", "Sub", "Mul", "RealDiv", "Maximum", "Minimum")
}


class NumpyGraph:
    """A frozen TensorFlow graph of dense-layer operations, run as a list of NumPy steps.

    Values live in numbered registers: 0 is the input, constants are filled in once, and each step writes
    one register from one or two others. The output is the last register.
    """

    def __init__(self, steps: list[tuple[Any, ...]], registers: list[Any]) -> None:
        self._steps = steps
        self._registers = registers

    def __call__(self, x: np.ndarray) -> np.ndarray:
        values = self._registers.copy()
        values[0] = x
        for step in self._steps:
            if len(step) == 3:
                function, out, a = step
                values[out] = function(values[a])
            else:
                function, out, a, b = step
                values[out] = function(values[a], values[b])
        return values[-1]

    @classmethod
    def from_graph_def(cls, graph_def: Any, input_node: str, output_node: str) -> NumpyGraph:
        import tensorflow as tf

        nodes = {node.name: node for node in graph_def.node}
        register: dict[str, int] = {}
        registers: list[Any] = [None]
        steps: list[tuple[Any, ...]] = []
        ops: list[str] = []

        def new_register(value: Any = None) -> int:
            registers.append(value)
            return len(registers) - 1

        def source(reference: str) -> str:
            name, _, index = reference.partition(":")
            if index not in ("", "0"):
                raise UnsupportedGraphError(f"multi-output operation feeds {reference}")
            return name

        def resolve(name: str, depth: int = 0) -> int:
            if name in register:
                return register[name]
            if depth > 500 or name not in nodes:
                raise UnsupportedGraphError(f"cannot follow node {name!r}")
            node = nodes[name]
            inputs = [source(i) for i in node.input if not i.startswith("^")]
            op = node.op
            if op == "Placeholder":
                if name != input_node:
                    raise UnsupportedGraphError(f"second input {name!r}")
                result = 0
            elif op == "Const":
                value = tf.make_ndarray(node.attr["value"].tensor)
                if value.dtype != np.float32:
                    raise UnsupportedGraphError(f"constant {name!r} of type {value.dtype}")
                result = new_register(value)
            elif op in PASS_THROUGH or (op == "Cast" and _is_float32_cast(node)):
                result = resolve(inputs[0], depth + 1)
            elif op in UNARY or op == "LeakyRelu":
                function = UNARY.get(op) or _leaky_relu(node.attr["alpha"].f)
                arg = resolve(inputs[0], depth + 1)
                result = new_register()
                steps.append((function, result, arg))
                ops.append(op)
            elif op in BINARY or op == "MatMul":
                if op == "BiasAdd" and node.attr["data_format"].s not in (b"", b"NHWC"):
                    raise UnsupportedGraphError("BiasAdd with NCHW layout")
                a, b = (resolve(i, depth + 1) for i in inputs[:2])
                if op == "MatMul" and node.attr["transpose_a"].b:
                    raise UnsupportedGraphError("MatMul with transpose_a")
                if op == "MatMul" and node.attr["transpose_b"].b:
                    if registers[b] is None:
                        raise UnsupportedGraphError("MatMul with a transposed computed operand")
                    b = new_register(np.ascontiguousarray(registers[b].T))
                result = new_register()
                # TF MatMul is strictly 2-D, where np.dot is matmul with less overhead (a row: 1.7 vs 2.2 us).
                steps.append((np.dot if op == "MatMul" else BINARY[op], result, a, b))
                ops.append(op)
            else:
                raise UnsupportedGraphError(f"operation {op}")
            register[name] = result
            return result

        final = resolve(output_node)
        # Registers are allocated in evaluation order, so the output's step is the last one.
        if not steps or steps[-1][1] != final or final != len(registers) - 1:
            raise UnsupportedGraphError("the output is not computed from the input")
        return cls(_in_place(steps, ops, registers), registers)


def _in_place(steps: list[tuple[Any, ...]], ops: list[str], registers: list[Any]) -> list[tuple[Any, ...]]:
    """Let an element-wise step overwrite its first operand when that is a temporary read only by it."""
    readers: dict[int, int] = {}
    for step in steps:
        for arg in step[2:]:
            readers[arg] = readers.get(arg, 0) + 1
    rewritten = []
    for step, op in zip(steps, ops, strict=True):
        first = step[2]
        temporary = first != 0 and registers[first] is None and readers.get(first) == 1
        if temporary and len(step) == 3 and op in IN_PLACE_UNARY:
            step = (IN_PLACE_UNARY[op], *step[1:])
        elif temporary and len(step) == 4 and op in IN_PLACE_BINARY:
            step = (IN_PLACE_BINARY[op], *step[1:])
        rewritten.append(step)
    return rewritten


def _is_float32_cast(node: Any) -> bool:
    import tensorflow as tf

    return node.attr["SrcT"].type == tf.float32.as_datatype_enum == node.attr["DstT"].type


def _leaky_relu(alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    return functools.partial(_leaky, np.float32(alpha))


def numpy_runner(
    graph: NumpyGraph,
    run_tensorflow: Callable[[np.ndarray], np.ndarray] | None,
    max_rows: int | None,
) -> Callable[[np.ndarray], np.ndarray]:
    """The graph in NumPy, in blocks of rows; batches above ``max_rows`` (if any) go to TensorFlow.

    Without ``max_rows`` TensorFlow is never called, so ``run_tensorflow`` may be None (a graph compiled in
    another process, with no SavedModel loaded in this one)."""
    if max_rows is not None and run_tensorflow is None:
        raise ValueError("batches above max_rows need TensorFlow")

    def run(matrix: np.ndarray) -> np.ndarray:
        rows = len(matrix)
        if max_rows is not None and rows > max_rows:
            assert run_tensorflow is not None
            return run_tensorflow(matrix)
        if rows <= NUMPY_BLOCK_ROWS:
            return np.asarray(graph(matrix), dtype=np.float32).reshape(rows, -1)
        first = np.asarray(graph(matrix[:NUMPY_BLOCK_ROWS]), dtype=np.float32).reshape(NUMPY_BLOCK_ROWS, -1)
        result = np.empty((rows, first.shape[1]), dtype=np.float32)
        result[:NUMPY_BLOCK_ROWS] = first
        for start in range(NUMPY_BLOCK_ROWS, rows, NUMPY_BLOCK_ROWS):
            block = matrix[start : start + NUMPY_BLOCK_ROWS]
            result[start : start + len(block)] = np.asarray(graph(block)).reshape(len(block), -1)
        return result

    return run


def compile_checked(
    signature: Any,
    input_name: str,
    output_name: str,
    reference: Callable[[np.ndarray], np.ndarray],
    dim: int,
    name: str,
) -> NumpyGraph | None:
    """Compile the signature to NumPy and check it against TensorFlow; None if it cannot be used."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        frozen = convert_variables_to_constants_v2(signature)
        placeholders = [t for t in frozen.inputs if t.dtype.name == "float32"]
        # The frozen function's outputs follow the signature's outputs flattened, i.e. sorted by name.
        output = frozen.outputs[sorted(signature.structured_outputs).index(output_name)]
        if len(placeholders) != 1:
            raise UnsupportedGraphError(f"{len(placeholders)} inputs")
        graph = NumpyGraph.from_graph_def(
            frozen.graph.as_graph_def(), placeholders[0].op.name, output.op.name
        )
    except UnsupportedGraphError as why:
        log.info("model %s runs in TensorFlow: %s", name, why)
        return None
    except Exception as err:  # freezing can fail on exotic graphs; TensorFlow still serves them
        log.info("model %s runs in TensorFlow: cannot freeze its graph (%s)", name, first_line(err))
        return None
    rng = np.random.default_rng(12345)
    probes = [
        rng.normal(size=(64, dim)).astype(np.float32),
        (rng.normal(size=(8, dim)) * 50).astype(np.float32),
        rng.uniform(size=(1, dim)).astype(np.float32),
    ]
    with np.errstate(all="ignore"):
        for probe in probes:
            expected = reference(probe)
            try:
                got = np.asarray(graph(probe), dtype=np.float32).reshape(expected.shape)
            except (ValueError, TypeError) as err:  # e.g. shapes that do not broadcast in place
                log.warning("model %s runs in TensorFlow: the NumPy engine failed (%s)", name, err)
                return None
            if not np.allclose(got, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL, equal_nan=True):
                log.warning("model %s runs in TensorFlow: the NumPy engine disagrees with it", name)
                return None
    return graph


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
