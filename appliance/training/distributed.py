"""One task of a multi-worker training job: data-parallel Keras on TensorFlow's MultiWorkerMirroredStrategy.

The cluster comes from ``TF_CONFIG``, TensorFlow's own variable: ``{"cluster": {"worker": ["host:port", ...]},
"task": {"type": "worker", "index": i}}``; without it, or with one worker, training is the single-process one.

- **Shares.** Task ``i`` of ``N`` streams entries ``[read*i//N, read*(i+1)//N)`` of every file
  (``appliance.data.streaming.share_range``); the dataset's auto-sharding is off, since the shares are the
  sharding. Every task computes the same feature spec (pass 1 over all files), so all normalise alike.
- **Equal steps.** Collective ops hang when tasks take different numbers of steps. Each task first reads its
  share once (filling its hold-out and feature cache, counting its training events), the tasks exchange their
  counts with one all-reduce, and every epoch takes ``min(counts) // per-task batch`` steps on every task; a
  task with more events leaves its surplus out of that epoch (the cache reshuffles it each epoch).
- **Batch.** The global batch is ``batch_size``: each of the ``N`` replicas takes ``batch_size / N`` events
  per step and the gradients are summed over replicas (each replica's loss is scaled by ``1/N``).
- **Chief.** Task 0 alone evaluates, writes plots, metrics and the bundle; the others return after training.
  Its validation events are its own share's; its test events are every share's test events (it reads the other
  shares' test part after training), so the test metrics are over the same events as a one-task run's.

Keras 3 (3.15) cannot ``fit`` under this strategy: it reduces a nested batch and scalar metrics with
``strategy.reduce(..., axis=0)``, which the collective strategy refuses. The epochs therefore run Keras's own
``train_step`` under ``strategy.run`` in a ``tf.function`` (the loop ``fit`` would run), and evaluation,
export and prediction use a plain copy of the trained model outside the strategy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from servicecore.errors import BadInputError

STRATEGY = "MultiWorkerMirroredStrategy"


@dataclass(frozen=True)
class Cluster:
    """The workers of a multi-worker job and which one this process is."""

    workers: tuple[str, ...]
    index: int

    @property
    def tasks(self) -> int:
        return len(self.workers)

    @property
    def chief(self) -> bool:
        return self.index == 0

    @property
    def share(self) -> tuple[int, int]:
        return self.index, self.tasks


def cluster_from_env(environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster ``TF_CONFIG`` describes, or None (unset, or a single worker: the ordinary training)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = task["index"]
    except (ValueError, KeyError, TypeError):
        raise BadInputError(
            'TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": i}}'
        ) from None
    if not isinstance(workers, list) or not all(isinstance(w, str) and ":" in w for w in workers):
        raise BadInputError("TF_CONFIG: cluster.worker must be a list of host:port addresses")
    if set(config["cluster"]) != {"worker"} or task.get("type") != "worker":
        raise BadInputError("TF_CONFIG: only a cluster of workers is supported (no chief, ps or evaluator)")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(workers):
        raise BadInputError(f"TF_CONFIG: task.index must be 0 to {len(workers) - 1}, got {index!r}")
    if len(workers) == 1:
        return None
    return Cluster(tuple(workers), index)


def create_strategy() -> Any:
    """The strategy (from ``TF_CONFIG``); it must exist before any other TensorFlow op of the process."""
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def refuse_framework(framework: str, workers: int) -> None:
    """Only Keras models train on several workers (checked at submission for a JSON model, and by the task
    once the model is built)."""
    if framework != "keras":
        raise BadInputError(
            f"a {framework} model cannot train on {workers} workers: multi-worker training is "
            "data-parallel Keras (TensorFlow's MultiWorkerMirroredStrategy); ask for one worker"
        )


def exchange_counts(strategy: Any, cluster: Cluster, count: int) -> list[int]:
    """Every task's ``count``, in task order, on every task (one all-reduce)."""
    import tensorflow as tf

    def contribute() -> Any:
        mine = tf.one_hot(cluster.index, cluster.tasks, dtype=tf.float64)
        # The replicas of one task (several local devices) all contribute; dividing by their number undoes it.
        return tf.distribute.get_replica_context().all_reduce("sum", tf.stack([mine * float(count), mine]))

    summed = strategy.experimental_local_results(strategy.run(contribute))[0].numpy()
    return [round(float(value)) for value in summed[0] / np.maximum(summed[1], 1.0)]


def steps_per_epoch(counts: list[int], batch_size: int, tasks: int) -> int:
    """Steps every task takes per epoch: the smallest share's training events in per-task batches."""
    per_task = -(-batch_size // tasks)
    return min(counts) // per_task


class DistributedEpochs:
    """Keras's ``train_step`` on every replica, ``steps`` steps per epoch, metrics averaged over replicas."""

    def __init__(self, strategy: Any, model: Any, sample: tuple[np.ndarray, ...]) -> None:
        import tensorflow as tf

        self.strategy = strategy
        self.model = model
        with strategy.scope():
            # What fit would build first (metrics, loss, optimizer state) from one batch's shapes; inside the
            # replicas' step it could not create variables.
            model._symbolic_build(data_batch=sample)

        @tf.function
        def step(iterator: Any) -> Any:
            return strategy.run(model.train_step, args=(next(iterator),))

        self._step = step

    def epoch(
        self, dataset: Any, steps: int, after_step: Callable[[dict[str, Any]], None]
    ) -> dict[str, float]:
        """Train ``steps`` steps on ``dataset`` (this task's batches of the global batch size)."""
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        self.model.reset_metrics()
        iterator: Iterator[Any] = iter(
            self.strategy.experimental_distribute_dataset(dataset.with_options(options))
        )
        outputs: Any = {}
        for _ in range(steps):
            outputs = self._step(iterator)
            after_step(outputs)
        return {
            name: float(self.strategy.reduce("MEAN", value, axis=None)) for name, value in outputs.items()
        }


def plain_copy(model: Any) -> Any:
    """The trained model outside the strategy, compiled alike: what the chief evaluates and exports."""
    import keras

    try:
        copy = keras.models.clone_model(model)
    except Exception as err:
        raise BadInputError(
            f"multi-worker training needs a model Keras can clone (Sequential or functional): {err}"
        ) from None
    copy.set_weights(model.get_weights())
    config = model.get_compile_config()
    if config:
        copy.compile_from_config(config)
    return copy


def describe(cluster: Cluster, counts: list[int], steps: int, batch_size: int) -> dict[str, Any]:
    """metrics.json's ``distributed``: how the job was spread, and what the chief's test events are."""
    return {
        "workers": cluster.tasks,
        "strategy": STRATEGY,
        "share": "task i of N streams entries [read*i//N, read*(i+1)//N) of every file",
        "train_events_per_task": counts,
        "steps_per_epoch": steps,
        "global_batch": batch_size,
        "validation_events": "task 0's share",
        "test_events": "every task's share (task 0 reads the others' test part after training)",
    }
