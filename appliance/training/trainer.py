"""Training the user's model on the streamed workflow, and producing the model bundle.

Every epoch is one pass of
:class:`~appliance.data.streaming.EventStream` over all the data. Its training events
feed Keras through ``tf.data`` (re-batched to ``batch_size`` and prefetched), so reading, which runs in the
stream's own thread, overlaps with training. Validation and test events are never trained on: in the first
pass they are written to a hold-out cache on disk beside the output (memory stays bounded by the chunk
size); validation runs on the cache after each epoch and the final evaluation on the test cache.

Progress events (``progress`` callback, ``--progress-file`` lines) are documented in docs/training.md; the
``mlaas4hep train`` command around this module is ``appliance.training.command``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from appliance.data.features import FeatureSpec
from appliance.data.specs import load_or_compute_specs
from appliance.data.streaming import TEST, TRAIN, VALIDATION, EventStream
from appliance.data.workflow import Workflow, load_workflow
from appliance.training.bundle import check_output_directory, write_bundle
from appliance.training.evaluation import roc_metrics
from appliance.training.feature_cache import DEFAULT_FEATURE_CACHE_MB, FeatureCache
from appliance.training.frameworks import (
    Batch,
    FrameworkModel,
    TorchModel,
    class_probabilities,
    cross_entropy,
)
from appliance.training.holdout import HoldOut
from appliance.training.models import TargetEncoding, load_model, preflight_model
from appliance.training.onnx_export import CHECK_EVENTS as ONNX_CHECK_EVENTS
from appliance.training.onnx_export import TOLERANCE as ONNX_TOLERANCE
from appliance.training.onnx_export import OnnxExport, export_onnx
from servicecore.errors import BadInputError
from servicecore.naming import check_name
from servicecore.publishing import publish as publish_bundle

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL_S = 5.0


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class EpochCounter:
    """Events that went through the stream in the current epoch (written by the tf.data generator)."""

    read: int = 0  # events streamed from the ROOT files
    cached: int = 0  # training events read back from the feature cache
    trained: int = 0
    started: float = field(default_factory=time.monotonic)


class Trainer:
    """Train ``model`` on ``stream``: real epochs over the whole stream, validation and a final test."""

    def __init__(
        self,
        stream: EventStream,
        model: Any,
        encoding: TargetEncoding,
        workdir: Path,
        class_weights: Mapping[int, float] | None = None,
        progress: Progress | None = None,
        feature_cache: FeatureCache | None = None,
        holdout_bound_bytes: int = 0,
    ) -> None:
        self.stream = stream
        self.model = model
        self.encoding = encoding
        self.params = stream.wf.params
        self.class_weights = dict(class_weights) if class_weights else None
        self.progress = progress or (lambda event: None)
        total, split = stream.total_events, self.params.split
        parts = {"validation": total * (1 - split) * self.params.validation_split, "test": total * split}
        self.validation, self.test = (
            _bounded_holdout(workdir, name, stream.dim, parts[name], holdout_bound_bytes, self.params.seed)
            for name in ("validation", "test")
        )
        self.cache = feature_cache
        self.history: list[dict[str, Any]] = []
        self.events_read = 0
        self.failure: Exception | None = None

    # tf.data pipelines -------------------------------------------------------------------------------------

    def _signature(self, weighted: bool) -> tuple[Any, ...]:
        import tensorflow as tf

        n = self.stream.n_classes
        target = {
            "binary": tf.TensorSpec([None, 1], tf.float32),
            "onehot": tf.TensorSpec([None, n], tf.float32),
            "sparse": tf.TensorSpec([None], tf.int64),
        }[self.encoding.mode]
        spec = (tf.TensorSpec([None, self.stream.dim], tf.float32), target)
        return (*spec, tf.TensorSpec([None], tf.float32)) if weighted else spec

    def _batched(self, generator: Callable[[], Iterator[Any]], signature: Any) -> Any:
        """A tf.data pipeline of ``batch_size`` batches from a generator of arrays of any length.

        TensorFlow would turn an exception raised in the generator into its own error type; it is kept in
        ``self.failure`` instead (the data then simply ends) and re-raised by the caller, so that a
        ``BadInputError`` from the stream still reaches the user as one.
        """
        import tensorflow as tf

        def guarded() -> Iterator[Any]:
            try:
                yield from generator()
            except Exception as err:
                self.failure = err

        dataset = tf.data.Dataset.from_generator(guarded, output_signature=signature)
        return dataset.rebatch(self.params.batch_size).prefetch(tf.data.AUTOTUNE)

    def _raise_failure(self) -> None:
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure

    def _weights(self, y: np.ndarray) -> np.ndarray:
        assert self.class_weights is not None
        table = np.asarray(
            [self.class_weights.get(i, 1.0) for i in range(self.stream.n_classes)], dtype=np.float32
        )
        return table[y]

    def train_dataset(self, epoch: int, counter: EpochCounter) -> Any:
        """The training events of one pass; the first pass also fills the validation and test caches."""
        n_classes = self.stream.n_classes
        weighted = self.class_weights is not None

        def generate() -> Iterator[tuple[np.ndarray, ...]]:
            for x, y, weights in self.train_arrays(epoch, counter):
                target = self.encoding.targets(y, n_classes)
                yield (x, target, weights) if weighted else (x, target)

        return self._batched(generate, self._signature(weighted))

    def train_arrays(self, epoch: int, counter: EpochCounter) -> Iterator[Batch]:
        """(features, class indices, sample weights or None) of the training events of one pass; the first
        pass also fills the validation and test caches."""
        weighted = self.class_weights is not None
        if epoch > 0 and self.cache is not None and self.cache.ready:
            for x, y in self.cache.blocks(epoch):
                counter.cached += len(y)
                counter.trained += len(y)
                yield x, y, (self._weights(y) if weighted else None)
            return
        first_pass = epoch == 0
        caching = first_pass and self.cache is not None and self.cache.writing
        for chunk in self.stream.chunks(epoch=epoch):
            counter.read += len(chunk)
            if first_pass:
                self.validation.append(*chunk.part(VALIDATION))
                self.test.append(*chunk.part(TEST))
            x, y = chunk.part(TRAIN)
            if len(y) == 0:
                continue
            if caching:
                self.cache.append(x, y)  # type: ignore[union-attr]
            counter.trained += len(y)
            yield x, y, (self._weights(y) if weighted else None)
        if first_pass:
            self.validation.flush()
            self.test.flush()
            if caching:
                self.cache.finish()  # type: ignore[union-attr]

    def holdout_dataset(self, holdout: HoldOut, with_targets: bool = True) -> Any:
        n_classes = self.stream.n_classes
        signature = self._signature(weighted=False)

        def generate() -> Iterator[Any]:
            for x, y in holdout.arrays():
                yield (np.asarray(x), self.encoding.targets(y, n_classes)) if with_targets else np.asarray(x)

        return self._batched(generate, signature if with_targets else signature[0])

    # the loop ----------------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        epochs = self.params.epochs
        for epoch in range(epochs):
            counter = EpochCounter()
            if isinstance(self.model, FrameworkModel):
                if epoch > 0 and self.model.single_pass:
                    break  # an estimator fitted once on its sample: another pass would change nothing
                losses = {"loss": self._fit_framework_epoch(epoch, counter)}
            else:
                losses = self._fit_keras_epoch(epoch, epochs, counter)
            seconds = time.monotonic() - counter.started
            self.events_read += counter.read
            if epoch == 0:
                self._check_first_pass(counter)
            record: dict[str, Any] = {"epoch": epoch + 1, "epochs": epochs}
            record |= losses
            if self.validation.events:
                record |= {f"val_{k}": v for k, v in self._evaluate(self.validation).items()}
            passed = counter.read + counter.cached
            record |= {
                "events_read": counter.read,
                "events_from_cache": counter.cached,
                "events_trained": counter.trained,
                "seconds": round(seconds, 3),
                "events_per_s": round(passed / seconds, 1) if seconds > 0 else None,
                "train_events_per_s": round(counter.trained / seconds, 1) if seconds > 0 else None,
            }
            self.history.append(record)
            self.progress({"stage": "train", **record, "time": now()})
        return self.history

    def _fit_keras_epoch(self, epoch: int, epochs: int, counter: EpochCounter) -> dict[str, float | None]:
        callback = _progress_callback(self.progress, epoch, epochs, counter)
        try:
            with _quiet_end_of_data():
                fit = self.model.fit(
                    self.train_dataset(epoch, counter),
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    shuffle=False,  # the stream shuffles
                    verbose=0,
                    callbacks=[callback],
                )
        except Exception:
            self._raise_failure()
            if counter.trained == 0:
                self._check_first_pass(counter)
            raise
        self._raise_failure()
        return {k: _number(v[-1]) for k, v in fit.history.items() if v}

    def _fit_framework_epoch(self, epoch: int, counter: EpochCounter) -> float | None:
        return _number(self.model.train_epoch(self.train_arrays(epoch, counter), epoch))

    def _framework_outputs(self, holdout: HoldOut) -> np.ndarray:
        parts = [self.model.predict(np.asarray(x)) for x, _ in holdout.arrays()]
        return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)

    def _evaluate(self, holdout: HoldOut) -> dict[str, float | None]:
        if isinstance(self.model, FrameworkModel):
            y = holdout.labels()
            probabilities = class_probabilities(self._framework_outputs(holdout))
            return {
                "loss": cross_entropy(probabilities, y),
                "accuracy": float(np.mean(np.argmax(probabilities, axis=1) == y)),
            }
        with _quiet_end_of_data():
            scores = self.model.evaluate(self.holdout_dataset(holdout), verbose=0, return_dict=True)
        self._raise_failure()
        return {k: _number(v) for k, v in scores.items()}

    def test_features(self, limit: int) -> np.ndarray:
        """The first ``limit`` test events' features (to check an exported model against)."""
        parts, held = [], 0
        for x, _ in self.test.arrays():
            parts.append(np.asarray(x[: limit - held]))
            held += len(parts[-1])
            if held >= limit:
                break
        return np.concatenate(parts) if parts else np.zeros((0, self.stream.dim), dtype=np.float32)

    def _check_first_pass(self, counter: EpochCounter) -> None:
        if counter.trained == 0:
            raise BadInputError(
                f"no event is left for training out of {counter.read} read; "
                "lower split / validation_split or read more events (nevts)"
            )

    def evaluate(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Test metrics (loss, accuracy, ROC AUC) on the test part, and the ROC curves to plot."""
        y = self.test.labels()
        if len(y) == 0:
            return {"events": 0}, None
        scores = self._evaluate(self.test)
        if isinstance(self.model, FrameworkModel):
            outputs = self._framework_outputs(self.test)
        else:
            with _quiet_end_of_data():
                outputs = self.model.predict(self.holdout_dataset(self.test, with_targets=False), verbose=0)
            self._raise_failure()
        probabilities = self.encoding.probabilities(outputs)
        metrics: dict[str, Any] = {"events": len(y), **scores}
        metrics["accuracy"] = float(np.mean(np.argmax(probabilities, axis=1) == y))
        metrics["class_events"] = np.bincount(y, minlength=self.stream.n_classes).tolist()
        auc, roc = roc_metrics(y, probabilities, self.stream.class_names)
        metrics |= auc
        return metrics, roc


@contextlib.contextmanager
def _quiet_end_of_data() -> Iterator[None]:
    """Keras warns whenever a stream of unknown length ends, which is how every epoch here ends."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def _progress_callback(progress: Progress, epoch: int, epochs: int, counter: EpochCounter) -> Any:
    """A Keras callback reporting progress inside an epoch, at most every few seconds."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        last = time.monotonic()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            moment = time.monotonic()
            if moment - self.last < PROGRESS_INTERVAL_S:
                return
            self.last = moment
            seconds = moment - counter.started
            progress(
                {
                    "stage": "train",
                    "epoch": epoch + 1,
                    "epochs": epochs,
                    "partial": True,
                    "events_read": counter.read,
                    "events_per_s": round(counter.read / seconds, 1),
                    "loss": _number((logs or {}).get("loss")),
                    "time": now(),
                }
            )

    return EpochProgress()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- entry points ------------------------------------------------------------------------------------------


def configure_reproducibility(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    with contextlib.suppress(AttributeError, RuntimeError):
        tf.config.experimental.enable_op_determinism()


def training_device() -> str:
    """The device Keras places the model on: the first visible GPU, else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/device:CPU:0"


def _bounded_holdout(
    workdir: Path, name: str, dim: int, expected: float, bound_bytes: int, seed: int
) -> HoldOut:
    """A hold-out part on at most ``bound_bytes`` of disk (0: no bound): a proportional random sample whose
    expected size is a little under the bound, and a hard cap at it."""
    if bound_bytes <= 0:
        return HoldOut(workdir, name, dim)
    cap = max(bound_bytes // (dim * 4 + 8), 1)
    probability = min(1.0, 0.98 * cap / expected) if expected > 0 else 1.0
    return HoldOut(workdir, name, dim, keep_probability=probability, max_events=cap, seed=seed)


def _cache_bound(training: Mapping[str, Any]) -> int:
    """``training.feature_cache_mb`` in bytes (0 turns the cache off)."""
    megabytes = training.get("feature_cache_mb", DEFAULT_FEATURE_CACHE_MB)
    if not isinstance(megabytes, int | float) or isinstance(megabytes, bool) or megabytes < 0:
        raise BadInputError(
            f"params.json: training.feature_cache_mb must be a number >= 0, got {megabytes!r}"
        )
    return int(megabytes * 2**20)


def framework_device(model: Any) -> str:
    """Where the model trains: Keras's device, or the PyTorch module's; estimators train on the CPU."""
    if isinstance(model, TorchModel):
        return str(model.device)
    if isinstance(model, FrameworkModel):
        return "cpu"
    return training_device()


def framework_name(model: Any) -> str:
    return model.framework if isinstance(model, FrameworkModel) else "keras"


def _onnx_metrics(onnx: OnnxExport) -> dict[str, Any]:
    return {
        "servable": onnx.servable,
        "reason": onnx.reason,
        "checked_events": onnx.checked_events,
        "max_abs_diff": onnx.max_abs_diff,
        "tolerance": ONNX_TOLERANCE,
    }


def refuse_nonfinite(spec: FeatureSpec) -> None:
    """NaN or infinite raw values would silently become ``nan_value``; a model trained on them is suspect."""
    bad = spec.nonfinite_branches()
    if bad:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(bad.items()))
        raise BadInputError(
            f"branch(es) with NaN or infinite values: {listed}; exclude them "
            "(exclude_branches) or cut those events (preproc.json)"
        )


def run_training(
    *,
    files: str | Path,
    labels: str | Path,
    model: str | Path,
    params: str | Path | Mapping[str, Any],
    preproc: str | Path | Mapping[str, Any] | None = None,
    specs: str | Path | None = None,
    fout: str | Path,
    publish: str | Path | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``model`` on the workflow and write the bundle to ``fout`` (and publish it when asked).

    Returns ``{"bundle", "published", "name", "version", "metrics"}`` with the test metrics.
    """
    report = progress or (lambda event: None)
    started = time.monotonic()
    fout = Path(fout).absolute()
    check_output_directory(fout)
    model_name = check_name(name or fout.name)
    repository = Path(publish).absolute() if publish else None
    if repository is not None and repository.exists() and not repository.is_dir():
        raise BadInputError(f"model repository {str(repository)!r} is not a directory")

    wf = load_workflow(files, labels, params, preproc, specs)
    preflight_model(model)
    cache_bound = _cache_bound(wf.params.training)
    report({"stage": "specs", "files": len(wf.files), "time": now()})
    spec = load_or_compute_specs(wf)
    refuse_nonfinite(spec)
    stream = EventStream(wf, spec)
    report(
        {
            "stage": "specs",
            "events": stream.total_events,
            "features": spec.dim,
            "classes": stream.class_names,
            "time": now(),
        }
    )

    configure_reproducibility(wf.params.seed)
    user_model, encoding = load_model(
        model,
        spec.dim,
        stream.n_classes,
        options=wf.params.training,
        batch_size=wf.params.batch_size,
        seed=wf.params.seed,
    )
    device = framework_device(user_model)
    train_share = (1.0 - wf.params.split) * (1.0 - wf.params.validation_split)
    if isinstance(user_model, FrameworkModel):
        user_model.check_stream(int(stream.total_events * train_share))
    class_weights = stream.class_weights() if wf.params.class_weight == "balanced" else None
    parameters = user_model.count_params()
    log.info("training %s parameters on %s", parameters, device)
    report(
        {
            "stage": "train",
            "epoch": 0,
            "epochs": wf.params.epochs,
            "device": device,
            "framework": framework_name(user_model),
            "parameters": parameters,
            "time": now(),
        }
    )

    fout.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".mlaas4hep-holdout-", dir=fout.parent))
    try:
        cache = FeatureCache(workdir, spec.dim, cache_bound, wf.params.seed)
        if wf.params.epochs > 1:
            cache.plan(int(stream.total_events * train_share))
        trainer = Trainer(stream, user_model, encoding, workdir, class_weights, report, cache, cache_bound)
        history = trainer.fit()
        report({"stage": "evaluate", "events": trainer.test.events, "time": now()})
        test, roc = trainer.evaluate()
        onnx = None
        if isinstance(user_model, FrameworkModel):
            onnx = export_onnx(user_model, spec.dim, trainer.test_features(ONNX_CHECK_EVENTS))
            if not onnx.servable:
                log.warning("the model is published but not servable: %s", onnx.reason)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    metrics = _metrics_document(
        wf, spec, stream, trainer, test, device, user_model, class_weights, time.monotonic() - started
    )
    if onnx is not None:
        metrics["onnx"] = _onnx_metrics(onnx)
    bundle = write_bundle(
        fout,
        model=user_model,
        onnx=onnx,
        name=model_name,
        features=spec.to_dict(),
        class_names=stream.class_names,
        metrics=metrics,
        history=history,
        roc=roc,
    )
    published, version = None, None
    if repository is not None:
        report({"stage": "publish", "repository": str(repository), "name": model_name, "time": now()})
        published_path, version = publish_bundle(bundle, repository, model_name)
        published = str(published_path)
    result = {
        "bundle": str(bundle),
        "published": published,
        "name": model_name,
        "version": version,
        "metrics": test,
    }
    report({"stage": "done", **result, "time": now()})
    return result


def _metrics_document(
    wf: Workflow,
    spec: FeatureSpec,
    stream: EventStream,
    trainer: Trainer,
    test: dict[str, Any],
    device: str,
    model: Any,
    class_weights: dict[int, float] | None,
    seconds: float,
) -> dict[str, Any]:
    last = trainer.history[-1] if trainer.history else {}
    return {
        "test": test,
        "validation": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "history": trainer.history,
        "classes": stream.class_names,
        "events": {
            "total": stream.total_events,
            "validation": trainer.validation.events,
            "test": trainer.test.events,
            "validation_sample": trainer.validation.sampling(),
            "test_sample": trainer.test.sampling(),
            "train": trainer.history[0]["events_trained"] if trainer.history else 0,
            "read": trainer.events_read,
        },
        "features": spec.dim,
        "parameters": model.count_params(),
        "framework": framework_name(model),
        "sample": getattr(model, "sample_note", None),
        "feature_cache": trainer.cache.note if trainer.cache is not None else None,
        "device": device,
        "seed": wf.params.seed,
        "epochs": wf.params.epochs,
        "batch_size": wf.params.batch_size,
        "class_weight": class_weights,
        "seconds": round(seconds, 3),
        "finished": now(),
    }
