"""Pass 2: stream a workflow's events as mixed, shuffled, model-ready chunks (from TTrees or RNTuples).

One piece although above 400 lines: the serial and the parallel reading, a task's share and the conversion
must yield the very same chunks in the same order, which is easiest to see with them side by side.

Every chunk takes events from every file in proportion to the file's share of the data set, so all files end
together and no file's events are left unread when a small file runs out. Each event's train, validation or
test assignment is a hash of (seed, file, entry): it is the same in every epoch and every run with that seed,
so the test part is never seen by training. Memory is bounded by the chunk size, the read size
(``READ_EVENTS``) and the prefetch depth.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from appliance.data.features import FeatureSpec
from appliance.data.lanes import (
    END,
    Buffers,
    Lane,
    LanePool,
    available_cores,
    keep_freed_memory,
    prefetched,
)
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
# uproot and the transform also pay a cost per call and branch: each file is read several blocks' worth at a
# time, about this many events over all files, and cut into the blocks' steps (the blocks stay the same).
READ_EVENTS = 50_000
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


def share_range(read: int, task: int, tasks: int) -> tuple[int, int]:
    """Task ``task`` of ``tasks``'s entries of a file whose first ``read`` entries are used: the task-th of
    ``tasks`` consecutive, near-equal ranges. Every task computes the same split, and together the ranges
    cover each file once, so the tasks' events are the single-task stream's (same split hash, entries)."""
    return read * task // tasks, read * (task + 1) // tasks


class EventStream:
    """Chunks of ``(x, y, split)`` over all files of a workflow; iterate ``chunks(epoch)`` once per epoch.

    ``threads`` (default: ``read_threads`` of params.json, whose 0 means the cores this process may use) read,
    decompress and convert on that many threads; 1 reads in one thread. The chunks are the same either way.
    ``share`` ``(task, tasks)`` streams only that task's entry range of every file (:func:`share_range`): one
    task of a multi-worker training.
    """

    def __init__(
        self,
        wf: Workflow,
        spec: FeatureSpec,
        prefetch: int = 2,
        threads: int | None = None,
        share: tuple[int, int] | None = None,
    ) -> None:
        if not spec.dataset.get("files"):
            raise ValueError("the feature spec carries no data set description; compute it with pass 1")
        self.wf = wf
        self.spec = spec
        self.prefetch = prefetch
        if threads is None:
            threads = wf.params.read_threads
        self.threads = threads if threads > 0 else available_cores()
        self.files = spec.dataset["files"]
        self.read_branches: list[str] = spec.dataset["read_branches"]
        self.class_names: list[str] = spec.dataset["class_names"]
        self._class_values = np.asarray(spec.dataset.get("class_values") or [], dtype=np.float64)
        # Each file's normalisation of its event weights (pass 1's sums, see appliance.data.targets).
        weights = spec.dataset.get("weights") or {}
        self._file_factors = np.asarray(weights.get("file_factor") or [1.0] * len(self.files))
        self._trees: dict[str, Any] = {}  # opened once: reading a TTree's metadata costs ~50 ms per file
        self.share = share
        self._ranges = [share_range(f["read"], *share) if share else (0, f["read"]) for f in self.files]
        keep_freed_memory()  # large arrays reuse freed memory instead of fresh pages (data.lanes)

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

    @property
    def share_fraction(self) -> float:
        """The fraction of the read entries this stream streams (1.0 without a share)."""
        read = sum(f["read"] for f in self.files)
        return sum(stop - start for start, stop in self._ranges) / read if read else 1.0

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
        yield from prefetched(self._produce(epoch), self.prefetch)

    def _produce(self, epoch: int) -> Iterator[Chunk]:
        params = self.wf.params
        total = max(1, sum(stop - start for start, stop in self._ranges))
        chunk_size = params.chunk_size if params.chunk_size > 0 else total
        block_size = max(chunk_size, MIN_READ_EVENTS)
        # Each file's share of a block is one step; uproot is asked for `steps_per_read` steps at a time and
        # the result is cut at the step boundaries, so the blocks are those of step-by-step reading.
        steps_per_read = max(1, READ_EVENTS // block_size)
        steps = [
            (index, entry["url"], max(1, round(block_size * (stop - start) / total)), stop)
            for (index, entry), (start, stop) in zip(enumerate(self.files), self._ranges, strict=True)
            if stop > start
        ]
        rng = np.random.default_rng([params.seed, epoch])
        if self.threads <= 1:
            rounds = _rounds([self._file_parts(*s, steps_per_read) for s in steps])
        else:
            rounds = self._parallel_rounds(steps, steps_per_read)
        for parts in rounds:
            block = _assemble(parts, rng if params.shuffle else None)
            for start in range(0, len(block), chunk_size):
                yield block.take(slice(start, start + chunk_size))

    @property
    def regression(self) -> bool:
        return self.wf.params.regression

    @property
    def weighted(self) -> bool:
        return self.wf.params.weight_expression is not None

    def _file_parts(self, index: int, url: str, step: int, stop: int, steps_per_read: int) -> Iterator[Chunk]:
        """One file's parts, one per step, read and converted in this thread."""
        tree = self._tree(url)
        buffers = Buffers(self.dim)
        start = self._ranges[index][0]
        for read in iterate(tree, self.read_branches, step * steps_per_read, start, stop, url):
            yield from _parts_then_release(self._convert_steps(index, url, step, buffers, read), buffers)

    def _parallel_rounds(
        self, steps: list[tuple[int, str, int, int]], steps_per_read: int
    ) -> Iterator[list[Chunk]]:
        """The rounds of the serial path, read and converted by ``threads`` threads (data.lanes): the files'
        lanes read side by side, each read converted while the lane reads the next, and with fewer files than
        threads uproot decompresses a read's baskets on a pool of its own. The parts and their order are the
        serial ones."""
        for _, url, _, _ in steps:
            self._tree(url)  # opened here, once: lanes must not race to fill the cache
        # With as many files as threads the lanes keep every thread busy; a decompression pool then adds a
        # future per basket and more threads to switch between (~0.15 s of CPU per 300k events of the bench)
        # for no more parallelism.
        pooled = len(steps) < self.threads
        with (
            ThreadPoolExecutor(self.threads) if pooled else contextlib.nullcontext() as decompression,
            LanePool(self.threads) as pool,
        ):
            sources = []
            for index, url, step, stop in steps:
                start = self._ranges[index][0]
                reads = iterate(
                    self._tree(url),
                    self.read_branches,
                    step * steps_per_read,
                    start,
                    stop,
                    url,
                    decompression,
                )
                buffers = Buffers(self.dim)
                convert = partial(self._convert_steps, index, url, step, buffers)
                sources.append(_lane_parts(pool.lane(reads, convert), buffers))
            yield from _rounds(sources)

    def _convert_steps(
        self, index: int, url: str, step: int, buffers: Buffers, read: tuple[int, dict[str, Any]]
    ) -> Converted:
        """Convert one read at once (fewer, larger NumPy calls) and cut it into parts of ``step`` entries."""
        start, arrays = read
        n_read = len(next(iter(arrays.values())))
        buffer = buffers.take(n_read)
        chunk, entries = self._convert(index, url, start, arrays, buffer)
        bounds = np.searchsorted(entries, np.arange(start + step, start + n_read, step)).tolist()
        parts = [chunk.take(slice(a, b)) for a, b in zip([0, *bounds], [*bounds, len(chunk)], strict=True)]
        return Converted(parts, buffer)

    def _convert(
        self, index: int, url: str, start: int, arrays: dict[str, Any], buffer: np.ndarray | None = None
    ) -> tuple[Chunk, np.ndarray]:
        """The events of one read that pass the cuts, and their entry numbers."""
        n_read = len(next(iter(arrays.values())))
        full, keep = passing_events(self.wf.preproc.cuts, self.spec, arrays)
        columns = full if keep is None else {name: values[keep] for name, values in full.items()}
        entries = np.arange(start, start + n_read, dtype=np.int64)
        if keep is not None:
            entries = entries[keep]
        try:
            x = self.spec.transform(columns, buffer)
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
        return Chunk(x, y, split, weights), entries


def _rounds(sources: list[Iterator[Chunk]]) -> Iterator[list[Chunk]]:
    """Each round: the next part of every source not yet exhausted, in source (file) order."""
    sources = list(sources)
    while sources:
        parts = []
        for source in list(sources):
            part = next(source, None)
            if part is None:
                sources.remove(source)
            else:
                parts.append(part)
        if parts:
            yield parts


@dataclass
class Converted:
    """One read's parts and the buffer their ``x`` are views of."""

    parts: list[Chunk]
    buffer: np.ndarray


def _parts_then_release(converted: Converted, buffers: Buffers) -> Iterator[Chunk]:
    """Yield the parts; the caller asks for the next one only once the previous is in a block (``_rounds``),
    so after the last, the buffer is free again."""
    yield from converted.parts
    buffers.give(converted.buffer)


def _lane_parts(lane: Lane, buffers: Buffers) -> Iterator[Chunk]:
    while (converted := lane.next()) is not END:
        yield from _parts_then_release(converted, buffers)


def _assemble(parts: list[Chunk], rng: np.random.Generator | None) -> Chunk:
    """One block from the files' parts, in file order, shuffled when ``rng`` is given.

    The shuffle scatters each part straight to its rows of the block, one copy instead of a concatenation
    and a gather: row ``k`` of the block is event ``order[k]`` of the concatenated parts, as ``take(order)``.
    """
    if rng is None:
        return Chunk.concatenate(parts)
    n = sum(len(p) for p in parts)
    order = rng.permutation(n)
    rows = np.empty(n, dtype=np.int64)
    rows[order] = np.arange(n, dtype=np.int64)  # the inverse permutation: where each event goes
    first = parts[0]

    def empty(a: np.ndarray) -> np.ndarray:
        return np.empty((n, *a.shape[1:]), dtype=a.dtype)

    block = Chunk(
        empty(first.x), empty(first.y), empty(first.split), None if first.w is None else empty(first.w)
    )
    offset = 0
    x = _row_items(block.x)
    for part in parts:
        where = rows[offset : offset + len(part)]
        x[where] = _row_items(part.x)
        block.y[where] = part.y
        block.split[where] = part.split
        if block.w is not None and part.w is not None:
            block.w[where] = part.w
        offset += len(part)
    return block


def _row_items(x: np.ndarray) -> np.ndarray:
    """``x``'s rows as one opaque item each: NumPy then moves a row with one memcpy instead of element by
    element (the block's scatter is ~25% faster). ``x`` itself where its rows are not contiguous."""
    if x.ndim != 2 or x.shape[1] == 0 or not x.flags.c_contiguous:
        return x
    return x.view(np.dtype((np.void, x.shape[1] * x.itemsize))).reshape(len(x))


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
        "threads": stream.threads,
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
