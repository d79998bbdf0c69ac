"""Loaded models, the NumPy engine for dense-layer graphs, dynamic batching, and the per-worker model store.

Calling a TensorFlow signature costs about half a millisecond of framework overhead, more than a small MLP's
arithmetic. When a SavedModel's frozen serving graph is made only of dense-layer operations (MatMul, BiasAdd,
element-wise arithmetic and activations) it is compiled into a short list of NumPy steps, which is checked to
give the same numbers as TensorFlow on random inputs before it is used; any other graph runs in TensorFlow.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

from servicecore.errors import BadInputError
from tfaas.repository import Bundle, ModelNotFoundError, ModelRepository, Snapshot
from tfaas.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
INPUT_KEYS = ("input_name", "inputNode", "input_node")
OUTPUT_KEYS = ("output_name", "outputNode", "output_node")
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


# -- input validation ------------------------------------------------------------------------------------


def to_matrix(values: Any, dim: int, max_rows: int, what: str = "values") -> tuple[np.ndarray, bool]:
    """Validate numbers sent by a client: one row or a list of rows of ``dim`` finite numbers.

    Returns the float32 matrix and whether a single row (not a batch) was sent.
    """
    if isinstance(values, np.ndarray):
        array = values
    else:
        if not isinstance(values, list):
            raise BadInputError(f"{what} must be a list of numbers or a list of rows")
        try:
            array = np.array(values)
        except ValueError:
            raise BadInputError(f"{what}: every row must have {dim} numbers") from None
    if array.size == 0:
        raise BadInputError(f"{what} is empty: send at least one row of {dim} numbers")
    if array.dtype.kind not in "fiu":
        raise BadInputError(f"{what} must hold only numbers")
    single = array.ndim == 1
    if single:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise BadInputError(f"{what} must be one row or a list of rows, got {array.ndim} dimensions")
    if array.shape[1] != dim:
        raise BadInputError(f"{what}: the model expects {dim} features per row, got {array.shape[1]}")
    if array.shape[0] > max_rows:
        raise BadInputError(f"{what}: at most {max_rows} rows per request, got {array.shape[0]}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        matrix = np.asarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise BadInputError(f"{what} must be finite numbers (no NaN or infinity, within float32 range)")
    return matrix, single


# -- the NumPy engine ------------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _selu(x: np.ndarray) -> np.ndarray:
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Relu": lambda x: np.maximum(x, np.float32(0)),
    "Relu6": lambda x: np.clip(x, np.float32(0), np.float32(6)),
    "Sigmoid": expit,
    "Tanh": np.tanh,
    "Softmax": _softmax,
    "Softplus": lambda x: np.logaddexp(np.float32(0), x),
    "Elu": _elu,
    "Selu": _selu,
    "Exp": np.exp,
    "Log": np.log,
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Rsqrt": lambda x: np.float32(1) / np.sqrt(x),
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
    "Relu": lambda x: np.maximum(x, np.float32(0), out=x),
    "Sigmoid": lambda x: expit(x, out=x),
    "Tanh": lambda x: np.tanh(x, out=x),
}
IN_PLACE_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    op: (lambda ufunc: lambda x, y: ufunc(x, y, out=x))(BINARY[op])
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
    slope = np.float32(alpha)
    return lambda x: np.where(x > 0, x, x * slope)


# -- loading ---------------------------------------------------------------------------------------------

_TF_CONFIGURED = threading.Lock()
_tf_threads_set: list[bool] = []


def _tensorflow(threads: int) -> Any:
    import tensorflow as tf

    with _TF_CONFIGURED:
        if not _tf_threads_set:
            _tf_threads_set.append(True)
            if threads > 0:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(threads)
                    tf.config.threading.set_inter_op_parallelism_threads(threads)
                except RuntimeError:  # TensorFlow was already initialised in this process
                    pass
    return tf


@dataclass
class LoadedModel:
    bundle: Bundle
    input_name: str
    output_name: str
    dim: int
    n_outputs: int | None
    engine: str  # "numpy" or "tensorflow"
    run: Callable[[np.ndarray], np.ndarray]
    batcher: Batcher | None = None
    _features: Any = field(default=None, repr=False)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if self.batcher is not None:
            return self.batcher.submit(matrix)
        return self.run(matrix)

    @property
    def features(self) -> Any:
        """The bundle's FeatureSpec (for raw branch values), or None when params.json carries none."""
        if self._features is None and self.bundle.params.get("features"):
            from appliance.data.features import FeatureSpec

            spec = FeatureSpec.from_dict(self.bundle.params["features"])
            if spec.dim != self.dim:
                raise BadInputError(
                    f"model {self.bundle.name!r}: its feature spec gives {spec.dim} columns "
                    f"but the SavedModel takes {self.dim}"
                )
            self._features = spec
        return self._features


def load_model(bundle: Bundle, numpy_engine: bool = True, tf_threads: int = 1) -> LoadedModel:
    """Load a bundle's SavedModel; raise BadInputError naming the problem if it cannot be served."""
    tf = _tensorflow(tf_threads)
    try:
        loaded = tf.saved_model.load(str(bundle.path))
    except Exception as err:  # TensorFlow raises many types for a corrupt or foreign SavedModel
        raise BadInputError(
            f"model {bundle.name!r} is not a loadable SavedModel: {_first_line(err)}"
        ) from None
    signature_name = str(bundle.params.get("signature") or SIGNATURE)
    signatures = getattr(loaded, "signatures", {})
    if signature_name not in signatures:
        raise BadInputError(
            f"model {bundle.name!r} has no signature {signature_name!r} (it has {sorted(signatures)})"
        )
    signature = signatures[signature_name]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    input_name = _pick(bundle.params, INPUT_KEYS, inputs, "input", bundle.name)
    output_name = _pick(bundle.params, OUTPUT_KEYS, outputs, "output", bundle.name)
    spec = inputs[input_name]
    if spec.shape.rank != 2 or spec.shape[1] is None or not spec.dtype.is_floating:
        raise BadInputError(
            f"model {bundle.name!r}: input {input_name!r} must be a float matrix [None, dim], got "
            f"{spec.dtype.name} {spec.shape}"
        )
    dim = int(spec.shape[1])
    out_shape = outputs[output_name].shape
    n_outputs = int(out_shape[-1]) if out_shape.rank and out_shape[-1] is not None else None
    input_dtype = spec.dtype

    def run_tensorflow(matrix: np.ndarray) -> np.ndarray:
        result = signature(**{input_name: tf.constant(matrix, dtype=input_dtype)})[output_name]
        return np.asarray(result.numpy(), dtype=np.float32).reshape(len(matrix), -1)

    run, engine = run_tensorflow, "tensorflow"
    if numpy_engine and input_dtype == tf.float32:
        graph = _numpy_graph(signature, input_name, output_name, run_tensorflow, dim, bundle.name)
        if graph is not None:
            max_rows = None if tf_threads == 1 else NUMPY_MAX_ROWS
            run, engine = _numpy_engine(graph, run_tensorflow, max_rows), "numpy"
    model = LoadedModel(bundle, input_name, output_name, dim, n_outputs, engine, run)
    log.info("loaded %s version %d (%s engine, %d features)", bundle.name, bundle.version, engine, dim)
    return model


def _numpy_engine(
    graph: NumpyGraph, run_tensorflow: Callable[[np.ndarray], np.ndarray], max_rows: int | None
) -> Callable[[np.ndarray], np.ndarray]:
    """The graph in NumPy, in blocks of rows; batches above ``max_rows`` (if any) go to TensorFlow."""

    def run(matrix: np.ndarray) -> np.ndarray:
        rows = len(matrix)
        if max_rows is not None and rows > max_rows:
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


def _numpy_graph(
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
        log.info("model %s runs in TensorFlow: cannot freeze its graph (%s)", name, _first_line(err))
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


def _pick(
    params: Mapping[str, Any], keys: Sequence[str], available: Mapping[str, Any], kind: str, name: str
) -> str:
    for key in keys:
        wanted = params.get(key)
        if wanted in available:
            return wanted
    if len(available) == 1:
        return next(iter(available))
    raise BadInputError(
        f"model {name!r}: cannot tell which {kind} to use among {sorted(available)}; "
        f"set {keys[0]!r} in params.json"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


# -- dynamic batching ------------------------------------------------------------------------------------


@dataclass
class _Pending:
    matrix: np.ndarray
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    """Gathers concurrent requests on one worker into one model call.

    The first request to arrive leads: it waits, at most ``max_wait_s``, while other predict requests of the
    worker are still on their way (``in_flight``), then runs everything queued as one batch and hands each
    caller its rows. A request that is alone runs at once, so batching adds no latency to a lone client.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        max_wait_s: float,
        in_flight: Callable[[], int],
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._in_flight = in_flight
        self._on_batch = on_batch or (lambda rows: None)
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False

    def submit(self, matrix: np.ndarray) -> np.ndarray:
        if self._in_flight() <= 1 and not self._leading:
            # Alone on this worker: nothing to wait for. (A racy read: at worst this request is not batched.)
            result = self._run(matrix)
            self._on_batch(len(matrix))
            return result
        item = _Pending(matrix)
        with self._cond:
            self._queue.append(item)
            self._cond.notify_all()
            while not item.done and self._leading:
                self._cond.wait()
            if item.done:
                return self._result(item)
            self._leading = True
        try:
            while not item.done:
                self._lead()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return self._result(item)

    def _lead(self) -> None:
        deadline = time.monotonic() + self._max_wait_s
        with self._cond:
            while True:
                rows = sum(len(p.matrix) for p in self._queue)
                remaining = deadline - time.monotonic()
                if rows >= self._max_rows or remaining <= 0 or len(self._queue) >= self._in_flight():
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and (not batch or rows + len(self._queue[0].matrix) <= self._max_rows):
                pending = self._queue.pop(0)
                batch.append(pending)
                rows += len(pending.matrix)
        try:
            matrix = batch[0].matrix if len(batch) == 1 else np.concatenate([p.matrix for p in batch])
            result = self._run(matrix)
            self._on_batch(len(matrix))
            offsets = np.cumsum([0] + [len(p.matrix) for p in batch])
            for pending, start, stop in zip(batch, offsets[:-1], offsets[1:], strict=True):
                pending.result = result[start:stop]
        except BaseException as err:
            for pending in batch:
                pending.error = err
        with self._cond:
            for pending in batch:
                pending.done = True
            self._cond.notify_all()

    @staticmethod
    def _result(item: _Pending) -> np.ndarray:
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result


# -- the model store of one worker -----------------------------------------------------------------------


class ModelStore:
    """What one worker serves: the repository snapshot, refreshed on an interval, and models loaded lazily.

    A changed bundle (new fingerprint) or a deleted one is dropped from the store; requests that already hold
    the old model finish with it, and its memory goes when the last of them is done.
    """

    def __init__(
        self,
        settings: Settings,
        on_batch: Callable[[int], None] | None = None,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.repository = ModelRepository(settings.model_dir)
        self._on_batch = on_batch
        self._on_change = on_change or (lambda loaded: None)
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._snapshot: Snapshot = {}
        self._scanned_at = float("-inf")
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        # Set once the models present at start are loaded (or when nothing is preloaded).
        self.ready = threading.Event()
        self.refresh(force=True)

    # in-flight predict requests of this worker, which the batcher waits for
    def enter(self) -> None:
        with self._in_flight_lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    def in_flight(self) -> int:
        return self._in_flight

    def refresh(self, force: bool = False) -> Snapshot:
        now = time.monotonic()
        if not force and now - self._scanned_at < self.settings.reload_interval_s:
            return self._snapshot
        with self._lock:
            if not force and now - self._scanned_at < self.settings.reload_interval_s:
                return self._snapshot
            snapshot = self.repository.scan()
            stale = [
                key
                for key, model in self._loaded.items()
                if snapshot.get(key[0], {}).get(key[1]) is None
                or snapshot[key[0]][key[1]].fingerprint != model.bundle.fingerprint
            ]
            for key in stale:
                del self._loaded[key]
            self._snapshot = snapshot
            self._scanned_at = time.monotonic()
            loaded = len(self._loaded)
        if stale:
            log.info("dropped %d changed or deleted model versions", len(stale))
            gc.collect()  # TensorFlow objects hold reference cycles; free their memory now
            self._on_change(loaded)
        return snapshot

    def snapshot(self) -> Snapshot:
        return self.refresh()

    def bundle(self, name: str, version: int | None = None) -> Bundle:
        versions = self.refresh().get(name)
        missing = versions is None or (version is not None and version not in versions)
        # It may have been published a moment ago, by another worker or the trainer: look again.
        if missing and time.monotonic() - self._scanned_at > 0.05:
            versions = self.refresh(force=True).get(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} does not exist")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFoundError(f"model {name!r} has no version {version} (it has {sorted(versions)})")
        return versions[version]

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        bundle = self.bundle(name, version)
        key = (bundle.name, bundle.version)
        model = self._loaded.get(key)
        if model is not None and model.bundle.fingerprint == bundle.fingerprint:
            return model
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            model = self._loaded.get(key)
            if model is not None and model.bundle.fingerprint == bundle.fingerprint:
                return model
            model = load_model(bundle, self.settings.numpy_engine, self.settings.tf_threads)
            batching = self.settings.batching
            if batching.enabled and (model.engine == "tensorflow" or batching.numpy_models):
                model.batcher = Batcher(
                    model.run, batching.max_rows, batching.max_wait_ms / 1000, self.in_flight, self._on_batch
                )
            with self._lock:
                self._loaded[key] = model
                loaded = len(self._loaded)
        self._on_change(loaded)
        return model

    def loaded(self) -> dict[tuple[str, int], LoadedModel]:
        return dict(self._loaded)

    def load_latest(self) -> None:
        """Load the latest version of every model, as TF Serving does at start; failures are only logged."""
        for name in sorted(self.refresh(force=True)):
            try:
                self.get(name)
            except BadInputError as err:
                log.warning("cannot serve %s: %s", name, err)
        self.ready.set()

    def start_loading(self) -> None:
        """Load every model in the background, so the worker answers health probes meanwhile."""
        threading.Thread(target=self.load_latest, name="tfaas-preload", daemon=True).start()
