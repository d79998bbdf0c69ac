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
from appliance.training.holdout import HoldOut
from appliance.training.models import TargetEncoding, load_model, preflight_model
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

    read: int = 0
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
    ) -> None:
        self.stream = stream
        self.model = model
        self.encoding = encoding
        self.params = stream.wf.params
        self.class_weights = dict(class_weights) if class_weights else None
        self.progress = progress or (lambda event: None)
        self.validation = HoldOut(workdir, "validation", stream.dim)
        self.test = HoldOut(workdir, "test", stream.dim)
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
        first_pass = epoch == 0
        n_classes = self.stream.n_classes
        weighted = self.class_weights is not None

        def generate() -> Iterator[tuple[np.ndarray, ...]]:
            for chunk in self.stream.chunks(epoch=epoch):
                counter.read += len(chunk)
                if first_pass:
                    self.validation.append(*chunk.part(VALIDATION))
                    self.test.append(*chunk.part(TEST))
                x, y = chunk.part(TRAIN)
                if len(y) == 0:
                    continue
                counter.trained += len(y)
                target = self.encoding.targets(y, n_classes)
                yield (x, target, self._weights(y)) if weighted else (x, target)
            if first_pass:
                self.validation.flush()
                self.test.flush()

        return self._batched(generate, self._signature(weighted))

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
            seconds = time.monotonic() - counter.started
            self.events_read += counter.read
            if epoch == 0:
                self._check_first_pass(counter)
            record: dict[str, Any] = {"epoch": epoch + 1, "epochs": epochs}
            record |= {k: _number(v[-1]) for k, v in fit.history.items() if v}
            if self.validation.events:
                record |= {f"val_{k}": v for k, v in self._evaluate(self.validation).items()}
            record |= {
                "events_read": counter.read,
                "events_trained": counter.trained,
                "seconds": round(seconds, 3),
                "events_per_s": round(counter.read / seconds, 1) if seconds > 0 else None,
                "train_events_per_s": round(counter.trained / seconds, 1) if seconds > 0 else None,
            }
            self.history.append(record)
            self.progress({"stage": "train", **record, "time": now()})
        return self.history

    def _evaluate(self, holdout: HoldOut) -> dict[str, float | None]:
        with _quiet_end_of_data():
            scores = self.model.evaluate(self.holdout_dataset(holdout), verbose=0, return_dict=True)
        self._raise_failure()
        return {k: _number(v) for k, v in scores.items()}

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
    device = training_device()
    keras_model, encoding = load_model(model, spec.dim, stream.n_classes)
    class_weights = stream.class_weights() if wf.params.class_weight == "balanced" else None
    log.info("training %d parameters on %s", keras_model.count_params(), device)
    report(
        {
            "stage": "train",
            "epoch": 0,
            "epochs": wf.params.epochs,
            "device": device,
            "parameters": keras_model.count_params(),
            "time": now(),
        }
    )

    fout.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".mlaas4hep-holdout-", dir=fout.parent))
    try:
        trainer = Trainer(stream, keras_model, encoding, workdir, class_weights, report)
        history = trainer.fit()
        report({"stage": "evaluate", "events": trainer.test.events, "time": now()})
        test, roc = trainer.evaluate()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    metrics = _metrics_document(
        wf, spec, stream, trainer, test, device, keras_model, class_weights, time.monotonic() - started
    )
    bundle = write_bundle(
        fout,
        model=keras_model,
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
            "train": trainer.history[0]["events_trained"] if trainer.history else 0,
            "read": trainer.events_read,
        },
        "features": spec.dim,
        "parameters": model.count_params(),
        "device": device,
        "seed": wf.params.seed,
        "epochs": wf.params.epochs,
        "batch_size": wf.params.batch_size,
        "class_weight": class_weights,
        "seconds": round(seconds, 3),
        "finished": now(),
    }
