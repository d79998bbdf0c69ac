"""Training the user's model on the streamed workflow, and producing the model bundle.

One piece although above 400 lines: every framework's epochs, and a multi-worker task's, share one pass over
the stream, one hold-out and one history record; split apart, each would carry its own copy of them.

Every epoch is one pass of
:class:`~appliance.data.streaming.EventStream` over all the data. Its training events
feed Keras through ``tf.data`` (re-batched to ``batch_size`` and prefetched), so reading, which runs in the
stream's own thread, overlaps with training. Validation and test events are never trained on: in the first
pass they are written to a hold-out cache on disk beside the output (memory stays bounded by the chunk
size); validation runs on the cache after each epoch and the final evaluation on the test cache.

Progress events (``progress`` callback, ``--progress-file`` lines) are documented in docs/training.md. A
whole run (specs, this trainer, evaluation, export, bundle) is ``appliance.training.run``; the
``mlaas4hep train`` command around it is ``appliance.training.command``. One task of a multi-worker job
(``cluster``) trains its share with the strategy's equal steps (``appliance.training.distributed``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.data.streaming import TEST, TRAIN, VALIDATION, EventStream
from appliance.training.command import now
from appliance.training.distributed import (
    Cluster,
    DistributedEpochs,
    exchange_counts,
    plain_copy,
    steps_per_epoch,
)
from appliance.training.evaluation import regression_metrics, roc_metrics, weighted_accuracy
from appliance.training.feature_cache import FeatureCache
from appliance.training.frameworks import (
    Batch,
    FrameworkModel,
    class_probabilities,
    cross_entropy,
    squared_error,
)
from appliance.training.holdout import HoldOut, bounded_holdout
from appliance.training.models import TargetEncoding
from servicecore.errors import BadInputError

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL_S = 5.0


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
        cluster: Cluster | None = None,
        strategy: Any = None,
    ) -> None:
        self.stream = stream
        self.model = model
        self.encoding = encoding
        self.params = stream.wf.params
        self.class_weights = dict(class_weights) if class_weights else None
        # Event weights (params.json's weight) reach the loss, the validation loss and the test metrics;
        # class weights (class_weight) only the training loss, as before.
        self.weighted = stream.weighted or self.class_weights is not None
        self.progress = progress or (lambda event: None)
        total, split = stream.total_events, self.params.split
        share = total * stream.share_fraction  # the test part is every share's (the chief reads the others')
        parts = {"validation": share * (1 - split) * self.params.validation_split, "test": total * split}
        self.validation, self.test = (
            bounded_holdout(workdir, name, stream.dim, parts[name], holdout_bound_bytes, self.params.seed)
            for name in ("validation", "test")
        )
        self.cache = feature_cache
        self.history: list[dict[str, Any]] = []
        self.events_read = 0
        self.failure: Exception | None = None
        self.cluster = cluster
        self.strategy = strategy
        # Only the chief evaluates; the other tasks of a multi-worker job keep no hold-out.
        self.keeps_holdouts = cluster is None or cluster.chief
        self.filled = False  # the hold-out (and feature cache) pass is done
        self.steps: int | None = None  # a multi-worker task's steps per epoch
        self.in_strategy = False  # self.model is the strategy's (replicated) model
        self.task_counts: list[int] = []  # each task's training events (multi-worker)

    # tf.data pipelines -------------------------------------------------------------------------------------

    def _signature(self, weighted: bool) -> tuple[Any, ...]:
        import tensorflow as tf

        n = self.stream.n_classes
        target = {
            "binary": tf.TensorSpec([None, 1], tf.float32),
            "onehot": tf.TensorSpec([None, n], tf.float32),
            "sparse": tf.TensorSpec([None], tf.int64),
            "regression": tf.TensorSpec([None, n], tf.float32),
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

    def _weights(self, y: np.ndarray, w: np.ndarray | None) -> np.ndarray | None:
        """The training loss's sample weights: event weights times class weights, or None (unweighted)."""
        if self.class_weights is None:
            return w
        table = np.asarray(
            [self.class_weights.get(i, 1.0) for i in range(self.stream.n_classes)], dtype=np.float32
        )
        return table[y] if w is None else table[y] * w

    def train_dataset(self, epoch: int, counter: EpochCounter) -> Any:
        """The training events of one pass; the first pass also fills the validation and test caches."""
        n_classes = self.stream.n_classes
        weighted = self.weighted

        def generate() -> Iterator[tuple[np.ndarray, ...]]:
            for x, y, weights in self.train_arrays(epoch, counter):
                target = self.encoding.targets(y, n_classes)
                yield (x, target, weights) if weighted else (x, target)

        return self._batched(generate, self._signature(weighted))

    def train_arrays(self, epoch: int, counter: EpochCounter) -> Iterator[Batch]:
        """(features, class indices, sample weights or None) of the training events of one pass; the first
        pass also fills the validation and test caches."""
        if (epoch > 0 or self.filled) and self.cache is not None and self.cache.ready:
            for x, y, w in self.cache.blocks(epoch):
                counter.cached += len(y)
                counter.trained += len(y)
                yield x, y, self._weights(y, w)
            return
        first_pass = epoch == 0 and not self.filled
        caching = first_pass and self.cache is not None and self.cache.writing
        for chunk in self.stream.chunks(epoch=epoch):
            counter.read += len(chunk)
            if first_pass and self.keeps_holdouts:
                self.validation.append(*chunk.part(VALIDATION), chunk.weights(VALIDATION))
                self.test.append(*chunk.part(TEST), chunk.weights(TEST))
            x, y = chunk.part(TRAIN)
            w = chunk.weights(TRAIN)
            if len(y) == 0:
                continue
            if caching:
                self.cache.append(x, y, w)  # type: ignore[union-attr]
            counter.trained += len(y)
            yield x, y, self._weights(y, w)
        if first_pass:
            self.validation.flush()
            self.test.flush()
            self.filled = True
            if caching:
                self.cache.finish()  # type: ignore[union-attr]

    def holdout_dataset(self, holdout: HoldOut, with_targets: bool = True) -> Any:
        """A hold-out part for Keras: features, targets and (weighted training) event weights."""
        n_classes = self.stream.n_classes
        weighted = self.stream.weighted
        signature = self._signature(weighted=weighted)

        def generate() -> Iterator[Any]:
            for x, y, w in holdout.arrays():
                if not with_targets:
                    yield np.asarray(x)
                elif weighted:
                    yield np.asarray(x), self.encoding.targets(y, n_classes), w
                else:
                    yield np.asarray(x), self.encoding.targets(y, n_classes)

        return self._batched(generate, signature if with_targets else signature[0])

    # the loop ----------------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        epochs = self.params.epochs
        epoch_steps = self._plan_distributed() if self.cluster is not None else None
        for epoch in range(epochs):
            counter = EpochCounter()
            if isinstance(self.model, FrameworkModel):
                if epoch > 0 and self.model.single_pass:
                    break  # an estimator fitted once on its sample: another pass would change nothing
                losses = {"loss": self._fit_framework_epoch(epoch, counter)}
            elif epoch_steps is not None:
                losses = self._fit_distributed_epoch(epoch, epochs, counter, epoch_steps)
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
        if self.cluster is not None and self.cluster.chief:
            self.model = plain_copy(self.model)  # evaluation and export run outside the strategy
            self.in_strategy = False
            self._read_other_tests()
        return self.history

    # one task of a multi-worker job -------------------------------------------------------------------------

    def _plan_distributed(self) -> DistributedEpochs:
        """Read this task's share once (hold-out, feature cache, its training events), agree with the other
        tasks on the steps per epoch, and build the replicas' step."""
        assert self.cluster is not None
        counter = EpochCounter()
        for _ in self.train_arrays(0, counter):
            pass
        self._raise_failure()
        self.events_read += counter.read
        self.task_counts = exchange_counts(self.strategy, self.cluster, counter.trained)
        self.steps = steps_per_epoch(self.task_counts, self.params.batch_size, self.cluster.tasks)
        if self.steps == 0:
            raise BadInputError(
                f"a share has too few training events for one step of {self.params.batch_size} events over "
                f"{self.cluster.tasks} workers (training events per worker: {self.task_counts}); "
                "read more events, lower batch_size or ask for fewer workers"
            )
        signature = self._signature(self.weighted)
        sample = tuple(
            np.zeros([1 if d is None else d for d in spec.shape], spec.dtype.as_numpy_dtype)
            for spec in signature
        )
        self.in_strategy = True
        return DistributedEpochs(self.strategy, self.model, sample)

    def _fit_distributed_epoch(
        self, epoch: int, epochs: int, counter: EpochCounter, replicas: DistributedEpochs
    ) -> dict[str, float | None]:
        callback = _progress_callback(self.progress, epoch, epochs, counter)
        # repeat(): a share's stream never ends inside the agreed steps, whatever the batches' cut.
        dataset = self.train_dataset(epoch, counter).repeat()
        assert self.steps is not None
        losses = replicas.epoch(dataset, self.steps, lambda outputs: callback.on_train_batch_end(0, None))
        self._raise_failure()
        return {k: _number(v) for k, v in losses.items()}

    def _read_other_tests(self) -> None:
        """The chief's test part is every share's: read the other tasks' test events."""
        assert self.cluster is not None
        for task in range(self.cluster.tasks):
            if task == self.cluster.index:
                continue
            other = EventStream(self.stream.wf, self.stream.spec, share=(task, self.cluster.tasks))
            for chunk in other.chunks():
                self.events_read += len(chunk)
                self.test.append(*chunk.part(TEST), chunk.weights(TEST))
        self.test.flush()

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
        parts = [self.model.predict(np.asarray(x)) for x, _, _ in holdout.arrays()]
        return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)

    def _evaluate(self, holdout: HoldOut) -> dict[str, float | None]:
        if isinstance(self.model, FrameworkModel):
            y, w = holdout.labels(), holdout.weights()
            if self.encoding.regression:
                return {"loss": squared_error(self._framework_outputs(holdout), y, w)}
            probabilities = class_probabilities(self._framework_outputs(holdout))
            return {
                "loss": cross_entropy(probabilities, y, w),
                "accuracy": float(np.mean(np.argmax(probabilities, axis=1) == y)),
            }
        # A multi-worker task's model lives in the strategy: the chief validates a plain copy.
        model = plain_copy(self.model) if self.in_strategy else self.model
        with _quiet_end_of_data():
            scores = model.evaluate(self.holdout_dataset(holdout), verbose=0, return_dict=True)
        self._raise_failure()
        return {k: _number(v) for k, v in scores.items()}

    def test_features(self, limit: int) -> np.ndarray:
        """The first ``limit`` test events' features (to check an exported model against)."""
        parts, held = [], 0
        for x, _, _ in self.test.arrays():
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

    def test_outputs(self) -> np.ndarray:
        """The model's outputs on the test part, in the order of ``self.test``."""
        if isinstance(self.model, FrameworkModel):
            return self._framework_outputs(self.test)
        with _quiet_end_of_data():
            outputs = self.model.predict(self.holdout_dataset(self.test, with_targets=False), verbose=0)
        self._raise_failure()
        return np.asarray(outputs)

    def evaluate(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Test metrics on the test part, and what to plot: for a classifier loss, accuracy, ROC AUC (and
        weighted ones) and the ROC curves; for a regression loss, RMSE and residuals."""
        y, w = self.test.labels(), self.test.weights()
        if len(y) == 0:
            return {"events": 0}, None
        scores = self._evaluate(self.test)
        outputs = self.test_outputs()
        metrics: dict[str, Any] = {"events": len(y), **scores}
        if w is not None:
            metrics["sum_of_weights"] = float(w.sum())
        if self.encoding.regression:
            predictions = np.asarray(outputs, dtype=np.float64).reshape(len(y), -1)
            names = self.stream.class_names
            errors, residuals = regression_metrics(y, predictions, names, w, self.params.seed)
            return metrics | errors, residuals
        probabilities = self.encoding.probabilities(outputs)
        metrics["accuracy"] = float(np.mean(np.argmax(probabilities, axis=1) == y))
        if w is not None:
            metrics["accuracy_weighted"] = weighted_accuracy(y, probabilities, w)
        metrics["class_events"] = np.bincount(y, minlength=self.stream.n_classes).tolist()
        auc, roc = roc_metrics(y, probabilities, self.stream.class_names, w)
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
