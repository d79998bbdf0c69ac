"""The feature cache: the training part's preprocessed float32 matrix, on local disk after the first pass.

Epochs after the first read it memory-mapped, in shuffled blocks, instead of streaming and decompressing every
ROOT file again (over XRootD, often). It is bounded by ``training.feature_cache_mb`` (params.json): when the
training part would not fit, the job's log says so and every epoch streams as before. The bound is checked
against an estimate before the first pass and against the bytes actually written during it. Targets (class
indices or regression targets) and event weights stay in memory beside the map: a few bytes per event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_FEATURE_CACHE_MB = 2048
# Rows per shuffled block: large enough for sequential reads of the memory map, small enough to shuffle well.
BLOCK_ROWS = 4096
BYTES_PER_LABEL = 8


class FeatureCache:
    """Write the training events of pass 1, then give them back in shuffled blocks."""

    def __init__(
        self, directory: Path, dim: int, bound_bytes: int, seed: int, label_bytes: int = BYTES_PER_LABEL
    ) -> None:
        self.directory = directory
        self.dim = dim
        self.label_bytes = label_bytes  # target and weight bytes per event
        self.bound_bytes = bound_bytes
        self.seed = seed
        self.rows = 0
        self.ready = False
        self.note: str | None = None
        self._x_path = directory / "train-features.f32"
        self._labels: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        self._file: BinaryIO | None = None
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._w: np.ndarray | None = None

    def row_bytes(self) -> int:
        return self.dim * 4 + self.label_bytes

    def plan(self, expected_rows: int) -> bool:
        """Open the cache for writing if ``expected_rows`` fit the bound; else say why in the log."""
        needed = expected_rows * self.row_bytes()
        if self.bound_bytes <= 0:
            self.note = "feature cache off (training.feature_cache_mb is 0): every epoch streams"
        elif needed > self.bound_bytes:
            self.note = (
                f"feature cache off: about {expected_rows} training events need {needed / 2**20:.0f} MiB, "
                f"more than training.feature_cache_mb ({self.bound_bytes / 2**20:.0f} MiB); "
                "every epoch streams"
            )
        else:
            self._file = self._x_path.open("wb")
            return True
        log.warning(self.note)
        return False

    @property
    def writing(self) -> bool:
        return self._file is not None

    def append(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> None:
        if self._file is None or len(y) == 0:
            return
        if (self.rows + len(y)) * self.row_bytes() > self.bound_bytes:
            self.abandon(f"the training part grew past training.feature_cache_mb after {self.rows} events")
            return
        self._file.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        self._labels.append(np.asarray(y, dtype=np.int64) if y.dtype.kind in "iub" else np.asarray(y))
        if w is not None:
            self._weights.append(np.asarray(w, dtype=np.float32))
        self.rows += len(y)

    def abandon(self, why: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._x_path.unlink(missing_ok=True)
        self._labels, self._weights, self.rows = [], [], 0
        self.note = f"feature cache off: {why}; every epoch streams"
        log.warning(self.note)

    def finish(self) -> None:
        """End of pass 1: the written matrix becomes a read-only memory map."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self.rows == 0:
            self._x_path.unlink(missing_ok=True)
            return
        self._x = np.memmap(self._x_path, dtype=np.float32, mode="r", shape=(self.rows, self.dim))
        self._y = np.concatenate(self._labels)
        self._w = np.concatenate(self._weights) if self._weights else None
        self._labels, self._weights = [], []
        self.ready = True
        size = self.rows * self.row_bytes() / 2**20
        self.note = f"feature cache: {self.rows} training events, {size:.1f} MiB"
        log.info(self.note)

    def blocks(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """The cached (features, targets, weights or None) in blocks of ``BLOCK_ROWS``, blocks and rows within
        each shuffled per epoch."""
        assert self._x is not None and self._y is not None
        rng = np.random.default_rng([self.seed, epoch])
        starts = np.arange(0, self.rows, BLOCK_ROWS)
        for start in rng.permutation(starts):
            stop = min(start + BLOCK_ROWS, self.rows)
            order = rng.permutation(stop - start)
            w = None if self._w is None else self._w[start:stop][order]
            yield np.asarray(self._x[start:stop])[order], self._y[start:stop][order], w
