"""Loaded models and the per-worker model store (hot reload, lazy loading, batching per model).

The NumPy engine is in ``tfaas.engine``, dynamic batching in ``tfaas.batching``; what a request may send is
checked in ``tfaas.dataplane``.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servicecore.errors import BadInputError, ServiceError
from tfaas.batching import Batcher, InFlight
from tfaas.engine import NUMPY_MAX_ROWS, NumpyGraph, compile_checked, first_line, numpy_runner
from tfaas.repository import Bundle, ModelNotFoundError, ModelRepository, Snapshot
from tfaas.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
INPUT_KEYS = ("input_name", "inputNode", "input_node")
OUTPUT_KEYS = ("output_name", "outputNode", "output_node")

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
    engine: str  # "numpy", "tensorflow" or "onnx"
    run: Callable[[np.ndarray], np.ndarray]
    batcher: Batcher | None = None
    # The NumPy engine's compiled graph (engine "numpy"), which a process that checked an upload hands over.
    graph: NumpyGraph | None = field(default=None, repr=False)
    warmed: bool = False  # it has answered a warm-up prediction: only then may a request reach it
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
            f"model {bundle.name!r} is not a loadable SavedModel: {first_line(err)}"
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

    run, engine, graph = run_tensorflow, "tensorflow", None
    if numpy_engine and input_dtype == tf.float32:
        graph = compile_checked(signature, input_name, output_name, run_tensorflow, dim, bundle.name)
        if graph is not None:
            max_rows = None if tf_threads == 1 else NUMPY_MAX_ROWS
            run, engine = numpy_runner(graph, run_tensorflow, max_rows), "numpy"
    model = LoadedModel(bundle, input_name, output_name, dim, n_outputs, engine, run, graph=graph)
    log.info("loaded %s version %d (%s engine, %d features)", bundle.name, bundle.version, engine, dim)
    return model


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


def load_warmed(bundle: Bundle, numpy_engine: bool = True, tf_threads: int = 1) -> LoadedModel:
    """Load a bundle (SavedModel or ONNX) and warm it up with one prediction."""
    if bundle.params.get("runtime") == "onnx":
        from tfaas.onnx_model import load_onnx_model  # it builds on this module's LoadedModel

        return warm_up(load_onnx_model(bundle, tf_threads))
    return warm_up(load_model(bundle, numpy_engine, tf_threads))


def warm_up(model: LoadedModel) -> LoadedModel:
    try:
        model.run(np.zeros((1, model.dim), dtype=np.float32))
    except Exception as err:  # TensorFlow raises many types
        failure = first_line(err)
        raise BadInputError(f"model {model.bundle.name!r} fails its warm-up prediction: {failure}") from None
    return model


# -- the model store of one worker -----------------------------------------------------------------------


class ModelStore:
    """What one worker serves: the repository snapshot, refreshed on an interval, and the loaded models.

    Reload never pauses serving. A new latest version, or a version whose files changed, is loaded by one
    background thread (``tfaas-loader``), warmed up with a prediction, and only then put in place with one
    dictionary assignment under the lock; until then the version it replaces keeps answering. Requests already
    running hold their reference to the old model and finish on it. Once the latest version is in place, the
    other versions of that model are unloaded (a pinned version asked for later is loaded again), so the store
    holds about one model per name however often a name is republished. A deleted version is dropped at once.
    A request loads in its own thread only what nothing can stand in for: a model of which no version is
    loaded yet, or a pinned version that is not loaded.

    Memory: dropping a version and collecting the garbage gives its memory back in this process (measured in
    docs/tfaas.md: 60 loads of the benchmark model in a row, keeping only the last, level off within 5% of the
    first), so workers are not recycled.
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
        # Background loads queued or running, and loads that failed, by key: the fingerprint they were for.
        self._scheduled: dict[tuple[str, int], tuple[Any, ...]] = {}
        self._failed: dict[tuple[str, int], tuple[Any, ...]] = {}
        self._queue: queue.Queue[Bundle] = queue.Queue()
        self._loader: threading.Thread | None = None
        self._snapshot: Snapshot = {}
        self._scanned_at = float("-inf")
        # Predict requests now running (``with store.in_flight:``), which the batchers wait for.
        self.in_flight = InFlight()
        # Set once the models present at start are loaded (or when nothing is preloaded).
        self.ready = threading.Event()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> Snapshot:
        now = time.monotonic()
        if not force and now - self._scanned_at < self.settings.reload_interval_s:
            return self._snapshot
        with self._lock:
            if not force and now - self._scanned_at < self.settings.reload_interval_s:
                return self._snapshot
            snapshot = self.repository.scan()
            deleted = [key for key in self._loaded if snapshot.get(key[0], {}).get(key[1]) is None]
            for key in deleted:
                del self._loaded[key]
            self._snapshot = snapshot
            self._scanned_at = time.monotonic()
            loaded = len(self._loaded)
            names = {name for name, _ in self._loaded}
        # Load what changed before a request asks for it: the latest version of every model being served, and
        # any loaded version whose files changed in place.
        for name in names:
            versions = snapshot.get(name, {})
            if versions:
                self._ensure_current(versions[max(versions)])
        for key, model in list(self._loaded.items()):
            bundle = snapshot.get(key[0], {}).get(key[1])
            if bundle is not None and bundle.fingerprint != model.bundle.fingerprint:
                self._ensure_current(bundle)
        if deleted:
            log.info("dropped %d deleted model versions", len(deleted))
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
        """The model that answers for ``name`` (``version`` None: the latest), never one still loading."""
        bundle = self.bundle(name, version)
        key = (bundle.name, bundle.version)
        model = self._loaded.get(key)
        if model is not None:
            if model.bundle.fingerprint != bundle.fingerprint:
                self._ensure_current(bundle)  # changed in place: the loaded one answers until then
            return model
        if version is None:
            standing_in = self._newest_loaded(name)
            if standing_in is not None:
                self._ensure_current(bundle)
                return standing_in
        return self._load_now(bundle)

    def loaded(self) -> dict[tuple[str, int], LoadedModel]:
        return dict(self._loaded)

    def load_latest(self) -> None:
        """Load the latest version of every model, as TF Serving does at start; failures are only logged."""
        try:
            for name in sorted(self.refresh(force=True)):
                try:
                    self.get(name)
                except ServiceError as err:  # unservable, or deleted since the scan
                    log.warning("cannot serve %s: %s", name, err)
        finally:
            self.ready.set()

    def start_loading(self) -> None:
        """Load every model in the background, so the worker answers health probes meanwhile."""
        threading.Thread(target=self.load_latest, name="tfaas-preload", daemon=True).start()

    def wait_for_loads(self, timeout: float) -> bool:
        """Wait until no background load is queued or running (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._scheduled:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # -- loading --

    def _newest_loaded(self, name: str) -> LoadedModel | None:
        """The newest loaded version of ``name`` still in the repository: it stands in for a newer one."""
        versions = self._snapshot.get(name, {})
        candidates = [m for (n, v), m in list(self._loaded.items()) if n == name and v in versions]
        return max(candidates, key=lambda m: m.bundle.version, default=None)

    def _ensure_current(self, bundle: Bundle) -> None:
        """Queue a background load of ``bundle`` unless it is loaded, queued, or known to fail."""
        key = (bundle.name, bundle.version)
        with self._lock:
            model = self._loaded.get(key)
            if model is not None and model.bundle.fingerprint == bundle.fingerprint:
                return
            if bundle.fingerprint in (self._scheduled.get(key), self._failed.get(key)):
                return
            self._scheduled[key] = bundle.fingerprint
            if self._loader is None or not self._loader.is_alive():
                self._loader = threading.Thread(target=self._load_queued, name="tfaas-loader", daemon=True)
                self._loader.start()
        self._queue.put(bundle)

    def _load_queued(self) -> None:
        while True:
            bundle = self._queue.get()
            key = (bundle.name, bundle.version)
            try:
                self._install(self.build(bundle))
            except Exception as err:  # a broken bundle on disk: the version it would replace keeps serving
                log.warning("cannot load %s version %d: %s", bundle.name, bundle.version, err)
                with self._lock:
                    self._failed[key] = bundle.fingerprint
            finally:
                with self._lock:
                    if self._scheduled.get(key) == bundle.fingerprint:
                        del self._scheduled[key]

    def _load_now(self, bundle: Bundle) -> LoadedModel:
        key = (bundle.name, bundle.version)
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            model = self._loaded.get(key)
            if model is not None and model.bundle.fingerprint == bundle.fingerprint:
                return model
            model = self.build(bundle)
            self._install(model)
        return model

    def build(self, bundle: Bundle) -> LoadedModel:
        """Load and warm up: the model answers one prediction before any request can reach it."""
        return self._ready(load_warmed(bundle, self.settings.numpy_engine, self.settings.tf_threads))

    def install_checked(self, checked: LoadedModel, name: str, version: int) -> None:
        """Serve the version just published from ``checked``, what the upload's check built in a child
        process: a NumPy-engine model from its graph, with no load in this worker; any other model is loaded
        here, as a request would load it."""
        try:
            bundle = self.bundle(name, version)
        except ServiceError as err:  # deleted meanwhile: nothing to serve
            log.warning("cannot serve %s version %d just published: %s", name, version, err)
            return
        if checked.graph is None:
            self.get(name, version)
            return
        checked.bundle = bundle
        checked.run = numpy_runner(checked.graph, None, None)
        self._install(self._ready(warm_up(checked)))

    def _ready(self, model: LoadedModel) -> LoadedModel:
        """A warmed model with the batcher its engine and the settings call for."""
        batching = self.settings.batching
        if batching.enabled and (model.engine in ("tensorflow", "onnx") or batching.numpy_models):
            model.batcher = Batcher(
                model.run, batching.max_rows, batching.max_wait_ms / 1000, self.in_flight, self._on_batch
            )
        model.warmed = True
        return model

    def _install(self, model: LoadedModel) -> None:
        """Put a warmed model in place; once it is the latest version, unload the other versions of it."""
        name, version = model.bundle.name, model.bundle.version
        with self._lock:
            current = self._snapshot.get(name, {}).get(version)
            if current is None:
                return  # deleted while it loaded
            self._loaded[(name, version)] = model
            self._failed.pop((name, version), None)
            dropped = 0
            if version == max(self._snapshot[name]):
                for key in [k for k in self._loaded if k[0] == name and k[1] != version]:
                    del self._loaded[key]
                    self._load_locks.pop(key, None)
                    dropped += 1
            loaded = len(self._loaded)
        if dropped:
            log.info("unloaded %d older versions of %s", dropped, name)
            gc.collect()  # TensorFlow objects hold reference cycles; free their memory now
        self._on_change(loaded)
