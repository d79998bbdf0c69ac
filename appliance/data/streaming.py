"""Pass 2: stream a workflow's events as mixed, shuffled, model-ready chunks (from TTrees or RNTuples).

Every chunk takes events from every file in proportion to the file's share of the data set, so all files end
together and no file's events are left unread when a small file runs out. Each event's train, validation or
test assignment is a hash of (seed, file, entry): it is the same in every epoch and every run with that seed,
so the test part is never seen by training. Memory is bounded by the chunk size and the prefetch depth.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.data.features import FeatureSpec
from appliance.data.sources import compressed_bytes, iterate, open_tree
from appliance.data.specs import load_or_compute_specs, passing_events
from appliance.data.targets import loss_weights, raw_weights, target_values
from appliance.data.workflow import Workflow, load_workflow
from servicecore.errors import BadInputError

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = 0, 1, 2
# uproot pays a fixed cost per read step and branch, so small chunks are read in blocks of at least this many
# events and then cut to the chunk size; memory stays bounded by max(chunk size, this).
MIN_READ_EVENTS = 20_000
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass
class Chunk:
    x: np.ndarray  # float32 [n, dim]
    y: np.ndarray  # int64 [n], class index; float32 [n, targets] for a regression
    split: np.ndarray  # uint8 [n]: TRAIN, VALIDATION or TEST
    w: np.ndarray | None = None  # float32 [n], the event weights the loss uses; None when unweighted

    def __len__(self) -> int:
        return len(self.y)

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.split == which
        return self.x[keep], self.y[keep]

    def weights(self, which: int) -> np.ndarray | None:
        return None if self.w is None else self.w[self.split == which]

    def take(self, index: Any) -> Chunk:
        """The events at ``index`` (a slice or an index array), every array alike."""
        return Chunk(
            self.x[index], self.y[index], self.split[index], None if self.w is None else self.w[index]
        )

    @classmethod
    def concatenate(cls, chunks: list[Chunk]) -> Chunk:
        weighted = chunks[0].w is not None
        return cls(
            np.concatenate([c.x for c in chunks]),
            np.concatenate([c.y for c in chunks]),
            np.concatenate([c.split for c in chunks]),
            np.concatenate([c.w for c in chunks if c.w is not None]) if weighted else None,
        )


def uniform_hash(seed: int, file_index: int, entries: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per (seed, file, entry): splitmix64, vectorised."""
    with np.errstate(over="ignore"):
        z = (
            entries.astype(np.uint64)
            + np.uint64(file_index + 1) * _GOLDEN
            + np.uint64(seed & 0xFFFFFFFF) * _MIX1
        )
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(uniform: np.ndarray, test_fraction: float, validation_fraction: float) -> np.ndarray:
    split = np.full(uniform.shape, TRAIN, dtype=np.uint8)
    split[uniform < test_fraction + (1.0 - test_fraction) * validation_fraction] = VALIDATION
    split[uniform < test_fraction] = TEST
    return split


class EventStream:
    """Chunks of ``(x, y, split)`` over all files of a workflow; iterate ``chunks(epoch)`` once per epoch."""

    def __init__(self, wf: Workflow, spec: FeatureSpec, prefetch: int = 2) -> None:
        if not spec.dataset.get("files"):
            raise ValueError("the feature spec carries no data set description; compute it with pass 1")
        self.wf = wf
        self.spec = spec
        self.prefetch = prefetch
        self.files = spec.dataset["files"]
        self.read_branches: list[str] = spec.dataset["read_branches"]
        self.class_names: list[str] = spec.dataset["class_names"]
        self._class_values = np.asarray(spec.dataset.get("class_values") or [], dtype=np.float64)
        # Each file's normalisation of its event weights (pass 1's sums, see appliance.data.targets).
        weights = spec.dataset.get("weights") or {}
        self._file_factors = np.asarray(weights.get("file_factor") or [1.0] * len(self.files))
        self._trees: dict[str, Any] = {}  # opened once: reading a TTree's metadata costs ~50 ms per file

    def _tree(self, url: str) -> Any:
        if url not in self._trees:
            self._trees[url] = open_tree(url, self.wf.tree)
        return self._trees[url]

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def total_events(self) -> int:
        return int(self.spec.dataset["events"])

    def class_weights(self) -> dict[int, float]:
        """Weights that balance the classes: total / (classes * events of the class)."""
        counts = np.asarray(self.spec.dataset["class_counts"], dtype=np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        return {i: float(w) for i, w in enumerate(weights)}

    def chunks(self, epoch: int = 0) -> Iterator[Chunk]:
        """One pass over the data, read ahead in a background thread while the caller works."""
        if self.prefetch <= 0:
            yield from self._produce(epoch)
            return
        yield from _prefetched(self._produce(epoch), self.prefetch)

    def _produce(self, epoch: int) -> Iterator[Chunk]:
        params = self.wf.params
        total = sum(f["read"] for f in self.files)
        chunk_size = params.chunk_size if params.chunk_size > 0 else total
        block_size = max(chunk_size, MIN_READ_EVENTS)
        readers = []
        for index, entry in enumerate(self.files):
            if entry["read"] <= 0:
                continue
            step = max(1, round(block_size * entry["read"] / total))
            tree = self._tree(entry["url"])
            readers.append(
                (index, entry["url"], iterate(tree, self.read_branches, step, 0, entry["read"], entry["url"]))
            )
        rng = np.random.default_rng([params.seed, epoch])
        while readers:
            parts = []
            for reader in list(readers):
                index, url, iterator = reader
                try:
                    start, arrays = next(iterator)
                except StopIteration:
                    readers.remove(reader)
                    continue
                parts.append(self._convert(index, url, start, arrays))
            if not parts:
                break
            block = Chunk.concatenate(parts)
            if params.shuffle:
                block = block.take(rng.permutation(len(block)))
            for start in range(0, len(block), chunk_size):
                yield block.take(slice(start, start + chunk_size))

    @property
    def regression(self) -> bool:
        return self.wf.params.regression

    @property
    def weighted(self) -> bool:
        return self.wf.params.weight_expression is not None

    def _convert(self, index: int, url: str, start: int, arrays: dict[str, Any]) -> Chunk:
        n_read = len(next(iter(arrays.values())))
        full, keep = passing_events(self.wf.preproc.cuts, self.spec, arrays)
        columns = full if keep is None else {name: values[keep] for name, values in full.items()}
        entries = np.arange(start, start + n_read, dtype=np.int64)
        if keep is not None:
            entries = entries[keep]
        try:
            x = self.spec.transform(columns)
        except BadInputError as err:
            raise BadInputError(f"{url}: {err}") from None
        weights = None
        if self.weighted:
            raw = raw_weights(self.wf, columns, url)
            assert raw is not None
            weights = loss_weights(self.wf, raw * self._file_factors[index], url)
        if self.regression:
            y = target_values(self.wf, columns, url)
        elif self.wf.label_branch:
            values = np.asarray(columns[self.wf.label_branch], dtype=np.float64)
            y = np.searchsorted(self._class_values, values).astype(np.int64)
            y = np.clip(y, 0, len(self._class_values) - 1)
            unknown = self._class_values[y] != values
            if unknown.any():
                raise BadInputError(
                    f"{url}: label branch {self.wf.label_branch!r} has value "
                    f"{values[unknown][0]} not seen in pass 1; recompute the specs"
                )
        else:
            y = np.full(len(entries), self.wf.labels[index], dtype=np.int64)
        split = assign_split(
            uniform_hash(self.wf.params.seed, index, entries),
            self.wf.params.test_fraction,
            self.wf.params.validation_split,
        )
        return Chunk(x, y, split, weights)


def _prefetched(source: Iterator[Chunk], depth: int) -> Iterator[Chunk]:
    """Run ``source`` in a thread, ``depth`` chunks ahead; errors surface in the consumer."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as err:
            buffer.put(err)

    thread = threading.Thread(target=produce, name="event-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                buffer.get_nowait()
        thread.join(timeout=5)


def read_workflow(
    files: str,
    labels: str,
    params: str,
    preproc: str | None = None,
    specs: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``mlaas4hep read``: pass 1 and one streaming pass, with the reading rate."""
    started = time.monotonic()
    wf = load_workflow(files, labels, params, preproc, specs)
    spec = load_or_compute_specs(wf)
    pass1 = time.monotonic() - started
    stream = EventStream(wf, spec)
    compressed = _compressed_bytes(wf, stream)
    bar = _progress_bar(stream.total_events) if progress else None
    events = 0
    per_class = np.zeros(stream.n_classes, dtype=np.int64)
    t0 = time.monotonic()
    for chunk in stream.chunks(epoch=0):
        events += len(chunk)
        if not stream.regression:
            per_class += np.bincount(chunk.y, minlength=stream.n_classes)
        if bar is not None:
            bar.update(len(chunk))
    seconds = time.monotonic() - t0
    if bar is not None:
        bar.close()
    return {
        "events": events,
        "features": spec.dim,
        "branches": {"flat": len(spec.flat), "jagged": len(spec.jagged)},
        "classes": dict(zip(stream.class_names, per_class.tolist(), strict=True)),
        "files": len(wf.files),
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
        "mb_per_s": round(compressed / 1e6 / seconds, 2) if seconds > 0 else None,
        "pass1_seconds": round(pass1, 3),
    }


def _compressed_bytes(wf: Workflow, stream: EventStream) -> float:
    """Compressed bytes pass 2 reads: each read branch's size, scaled to the entries read."""
    total = 0.0
    for entry in stream.files:
        tree = stream._tree(entry["url"])
        total += compressed_bytes(tree, stream.read_branches) * entry["read"] / max(entry["entries"], 1)
    return total


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc="reading", leave=False)
