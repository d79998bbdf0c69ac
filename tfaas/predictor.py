"""Loaded models and the per-worker model store (hot reload, lazy loading, batching per model).

The NumPy engine is in ``tfaas.engine``, dynamic batching in ``tfaas.batching``; what a request may send is
checked in ``tfaas.dataplane``.
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

from servicecore.errors import BadInputError, ServiceError
from tfaas.batching import Batcher, InFlight
from tfaas.engine import NUMPY_MAX_ROWS, compile_checked, first_line, numpy_runner
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

    run, engine = run_tensorflow, "tensorflow"
    if numpy_engine and input_dtype == tf.float32:
        graph = compile_checked(signature, input_name, output_name, run_tensorflow, dim, bundle.name)
        if graph is not None:
            max_rows = None if tf_threads == 1 else NUMPY_MAX_ROWS
            run, engine = numpy_runner(graph, run_tensorflow, max_rows), "numpy"
    model = LoadedModel(bundle, input_name, output_name, dim, n_outputs, engine, run)
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
            except ServiceError as err:  # unservable, or deleted since the scan
                log.warning("cannot serve %s: %s", name, err)
        self.ready.set()

    def start_loading(self) -> None:
        """Load every model in the background, so the worker answers health probes meanwhile."""
        threading.Thread(target=self.load_latest, name="tfaas-preload", daemon=True).start()
