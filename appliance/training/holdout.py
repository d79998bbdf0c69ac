"""The hold-out cache: validation and test events written to disk in the first pass, read back per epoch.

Memory stays bounded by the block size, whatever the number of hold-out events. Each event keeps its target
(class index, or regression targets) and, in a weighted training, its weight. Disk use may be bounded too
(issue 16): each event is then kept with the same probability, whatever its class, so that the sample keeps
the classes' shares (a proportional, stratified sample), and a hard cap stops it at the bound; metrics.json
states the sampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Rows per hold-out cache file: large enough for few files, small enough to keep memory bounded.
HOLDOUT_BLOCK_ROWS = 65_536


class HoldOut:
    """Validation or test events of the first pass, kept in ``.npy`` blocks on disk, read back in batches."""

    def __init__(
        self,
        directory: Path,
        name: str,
        dim: int,
        block_rows: int = HOLDOUT_BLOCK_ROWS,
        keep_probability: float = 1.0,
        max_events: int | None = None,
        seed: int = 0,
    ) -> None:
        self.directory = directory
        self.keep_probability = keep_probability
        self.max_events = max_events
        self.rng = np.random.default_rng([seed, len(name)])
        self.seen = 0
        self.name = name
        self.dim = dim
        self.block_rows = block_rows
        self.blocks: list[tuple[Path, Path, Path | None]] = []
        self.events = 0
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self._buffered = 0

    def append(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> None:
        if len(y) == 0:
            return
        self.seen += len(y)
        keep: np.ndarray | slice = slice(None)
        if self.keep_probability < 1.0:
            keep = np.flatnonzero(self.rng.random(len(y)) < self.keep_probability)
        if self.max_events is not None:
            room = max(self.max_events - self.events, 0)
            keep = np.arange(len(y))[keep][:room]
        x, y = x[keep], y[keep]
        if len(y) == 0:
            return
        self._x.append(x)
        self._y.append(y)
        if w is not None:
            self._w.append(w[keep])
        self._buffered += len(y)
        self.events += len(y)
        if self._buffered >= self.block_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        index = len(self.blocks)
        stem = self.directory / f"{self.name}-{index:05d}"
        paths = (Path(f"{stem}-x.npy"), Path(f"{stem}-y.npy"), Path(f"{stem}-w.npy") if self._w else None)
        np.save(paths[0], np.concatenate(self._x))
        np.save(paths[1], np.concatenate(self._y))
        if paths[2] is not None:
            np.save(paths[2], np.concatenate(self._w))
        self.blocks.append(paths)
        self._x, self._y, self._w, self._buffered = [], [], [], 0

    def sampling(self) -> dict[str, object] | None:
        """How the part was sampled, or None when every event was kept."""
        if self.seen == self.events:
            return None
        return {
            "kept": self.events,
            "of": self.seen,
            "keep_probability": round(self.keep_probability, 6),
            "max_events": self.max_events,
        }

    def labels(self) -> np.ndarray:
        """Every event's target: class indices, or a regression's [n, targets]."""
        self.flush()
        if not self.blocks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.load(y_path) for _, y_path, _ in self.blocks])

    def weights(self) -> np.ndarray | None:
        """Every event's weight, or None when the training is unweighted."""
        self.flush()
        if not self.blocks or self.blocks[0][2] is None:
            return None
        return np.concatenate([np.load(w_path) for _, _, w_path in self.blocks if w_path is not None])

    def arrays(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(features, targets, weights or None) block by block."""
        self.flush()
        for x_path, y_path, w_path in self.blocks:
            yield np.load(x_path, mmap_mode="r"), np.load(y_path), None if w_path is None else np.load(w_path)


# -- the training run --------------------------------------------------------------------------------------


def bounded_holdout(
    workdir: Path, name: str, dim: int, expected: float, bound_bytes: int, seed: int
) -> HoldOut:
    """A hold-out part on at most ``bound_bytes`` of disk (0: no bound): a proportional random sample whose
    expected size is a little under the bound, and a hard cap at it."""
    if bound_bytes <= 0:
        return HoldOut(workdir, name, dim)
    cap = max(bound_bytes // (dim * 4 + 8), 1)
    probability = min(1.0, 0.98 * cap / expected) if expected > 0 else 1.0
    return HoldOut(workdir, name, dim, keep_probability=probability, max_events=cap, seed=seed)
