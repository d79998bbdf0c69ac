"""The preprocessing contract: how raw branch values become the model's input matrix.

A :class:`FeatureSpec` is computed by pass 1
(``appliance.data.specs``), applied to every chunk by the stream, and
saved in the model bundle's ``params.json`` so that TFaaS applies exactly the same transformation to raw
branch values sent by a client. It depends only on NumPy and awkward.

Column order: flat branches, then each jagged branch padded/truncated to its length (``Jet_pt[0]`` ...), then
optional mask columns (``Jet_pt.mask[0]`` ..., 1 where a value is present).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from appliance.data.expressions import Expression
from servicecore.errors import BadInputError

FORMAT = "mlaas4hep-features/1"
NORMALISATIONS = ("minmax", "standard", "none")


@dataclass
class BranchStats:
    """Statistics of one branch over the training data (all elements, for jagged branches)."""

    name: str
    kind: str  # "flat" or "jagged"
    min: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    count: int = 0
    nonfinite: int = 0
    length: int = 0  # jagged: padded length used in the model input
    max_length: int = 0  # jagged: longest list seen
    length_counts: list[int] = field(default_factory=list)  # jagged: events per list length 0..max_length

    def scale(self, normalisation: str) -> tuple[float, float]:
        """Return (offset, factor) with normalised = (x - offset) * factor; a constant branch maps to 0."""
        if normalisation == "minmax":
            span = self.max - self.min
            return self.min, (1.0 / span if span > 0 else 0.0)
        if normalisation == "standard":
            return self.mean, (1.0 / self.std if self.std > 0 else 0.0)
        return 0.0, 1.0


@dataclass
class FeatureSpec:
    flat: list[BranchStats]
    jagged: list[BranchStats]
    normalisation: str = "minmax"
    nan_value: float = 0.0
    mask: bool = False
    new_branches: dict[str, dict[str, str]] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise BadInputError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        self._expressions = {
            name: Expression(definition["def"], where=f"new branch {name!r}")
            for name, definition in self.new_branches.items()
        }

    @property
    def branches(self) -> list[BranchStats]:
        return [*self.flat, *self.jagged]

    @property
    def columns(self) -> list[str]:
        names = [b.name for b in self.flat]
        for b in self.jagged:
            names += [f"{b.name}[{i}]" for i in range(b.length)]
        if self.mask:
            for b in self.jagged:
                names += [f"{b.name}.mask[{i}]" for i in range(b.length)]
        return names

    @property
    def dim(self) -> int:
        return len(self.flat) + sum(b.length for b in self.jagged) * (2 if self.mask else 1)

    @property
    def input_branches(self) -> list[str]:
        """Raw branches a caller must provide: feature branches and those read by new-branch definitions."""
        needed = [b.name for b in self.branches if b.name not in self.new_branches]
        for expression in self._expressions.values():
            needed += sorted(n for n in expression.names if n not in self.new_branches)
        return list(dict.fromkeys(needed))

    def nonfinite_branches(self) -> dict[str, int]:
        return {b.name: b.nonfinite for b in self.branches if b.nonfinite}

    # -- transformation --

    def add_new_branches(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``arrays`` plus the new branches of ``preproc.json``, computed in their declared order.

        A new branch already present (computed by the stream's cuts, or sent by a client) is kept as it is.
        """
        columns = (
            dict(arrays.items()) if isinstance(arrays, Mapping) else {f: arrays[f] for f in arrays.fields}
        )
        for name, expression in self._expressions.items():
            if name not in columns:
                columns[name] = expression.evaluate(lambda branch: _lookup(columns, branch))
        return columns

    def transform(self, arrays: Mapping[str, Any], buffer: np.ndarray | None = None) -> np.ndarray:
        """Turn raw branch arrays (one entry per event) into the float32 model input ``[n_events, dim]``.

        ``buffer`` (float32, C-ordered, ``dim`` columns, at least ``n_events`` rows) is filled and its first
        rows returned instead of a new array: a caller converting chunk after chunk saves the page faults of
        fresh memory, which cost more than the transformation itself on some VMs.
        """
        columns = self.add_new_branches(arrays)
        n_events = _n_events(columns, self.branches)
        if buffer is None:
            out = np.full((n_events, self.dim), self.nan_value, dtype=np.float32)
        else:
            out = buffer[:n_events]
            out.fill(self.nan_value)
        for j, stats in enumerate(self.flat):
            values = _flat_values(_lookup(columns, stats.name), stats.name, n_events)
            out[:, j] = self._normalise(stats, values)
        position = len(self.flat)
        mask_position = position + sum(b.length for b in self.jagged)
        if self.mask:
            out[:, mask_position:] = 0.0
        # Scatter into the flattened matrix: element k of an event's list goes to row * dim + column + k.
        flat_out = out.reshape(-1)
        slots = _SlotCache(n_events, self.dim)
        for stats in self.jagged:
            offsets, content = _jagged_parts(_lookup(columns, stats.name), stats.name, n_events)
            destination, keep = slots.get(offsets, stats.length)
            if destination.size:
                values = content if keep is None else content[keep]
                # Cast first: a scatter that casts as it writes is ~2x slower (the values are the same); a
                # float32 branch is normalised in float32 already, and is not copied again.
                normalised = self._normalise(stats, values).astype(np.float32, copy=False)
                flat_out[position:][destination] = normalised
                if self.mask:
                    flat_out[mask_position:][destination] = 1.0
            position += stats.length
            mask_position += stats.length
        return out

    def _normalise(self, stats: BranchStats, values: np.ndarray) -> np.ndarray:
        offset, factor = stats.scale(self.normalisation)
        with np.errstate(all="ignore"):
            result = values - offset  # a new array: the multiplication may then work in place
            result *= factor
        finite = np.isfinite(result)
        if not finite.all():
            result[~finite] = self.nan_value
        return result

    # -- serialisation --

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "normalisation": self.normalisation,
            "nan_value": self.nan_value,
            "mask": self.mask,
            "new_branches": self.new_branches,
            "flat": [asdict(b) for b in self.flat],
            "jagged": [asdict(b) for b in self.jagged],
            "columns": self.columns,
            "dim": self.dim,
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        if data.get("format") != FORMAT:
            raise BadInputError(
                f"unsupported feature spec format {data.get('format')!r}, expected {FORMAT!r}"
            )
        try:
            spec = cls(
                flat=[BranchStats(**b) for b in data["flat"]],
                jagged=[BranchStats(**b) for b in data["jagged"]],
                normalisation=data.get("normalisation", "minmax"),
                nan_value=float(data.get("nan_value", 0.0)),
                mask=bool(data.get("mask", False)),
                new_branches=dict(data.get("new_branches", {})),
                dataset=dict(data.get("dataset", {})),
            )
        except (KeyError, TypeError) as err:
            raise BadInputError(f"malformed feature spec: {err}") from None
        if "dim" in data and data["dim"] != spec.dim:
            raise BadInputError(f"feature spec says dim {data['dim']} but its branches give {spec.dim}")
        return spec


def _lookup(columns: Mapping[str, Any], name: str) -> Any:
    try:
        return columns[name]
    except KeyError:
        raise BadInputError(f"branch {name!r} is missing from the input") from None


def _n_events(columns: Mapping[str, Any], branches: list[BranchStats]) -> int:
    for stats in branches:
        if stats.name in columns:
            return len(columns[stats.name])
    return 0


class _SlotCache:
    """Destination indices per list-offsets pattern. Branches of one collection (``Jet_pt``, ``Jet_eta``...)
    share their offsets, so the index arithmetic is done once per collection and chunk."""

    def __init__(self, n_events: int, dim: int) -> None:
        self.n_events = n_events
        self.dim = dim
        self.entries: list[tuple[np.ndarray, int, np.ndarray, np.ndarray | None]] = []

    def get(self, offsets: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray | None]:
        for known, known_length, destination, keep in self.entries:
            if known_length == length and np.array_equal(known, offsets):
                return destination, keep
        counts = np.diff(offsets)
        slot = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], counts)
        rows = np.repeat(np.arange(self.n_events, dtype=np.int64) * self.dim, counts)
        keep = None
        if counts.size and counts.max() > length:
            keep = slot < length
            rows, slot = rows[keep], slot[keep]
        destination = rows + slot
        self.entries.append((offsets, length, destination, keep))
        return destination, keep


def _jagged_parts(array: Any, name: str, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat content) of a list-per-event array, without copies for uproot's arrays."""
    try:
        array = array if isinstance(array, ak.Array) else ak.Array(array)
        layout = array.layout
        if (
            isinstance(layout, ak.contents.ListOffsetArray)
            and isinstance(layout.content, ak.contents.NumpyArray)
            and layout.content.data.ndim == 1
        ):
            offsets = np.asarray(layout.offsets.data, dtype=np.int64)
            content = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
            offsets = offsets - offsets[0]
        else:
            counts = np.asarray(ak.num(array, axis=1), dtype=np.int64)
            content = np.asarray(ak.to_numpy(ak.flatten(array, axis=1)), dtype=np.float64)
            offsets = np.concatenate([[0], np.cumsum(counts)])
    except (ValueError, TypeError, ak.errors.AxisError) as err:
        raise BadInputError(f"branch {name!r} must hold a list of numbers per event ({err})") from None
    if content.dtype.kind not in "biuf":
        raise BadInputError(f"branch {name!r} must hold a list of numbers per event")
    if len(offsets) - 1 != n_events:
        raise BadInputError(f"branch {name!r} has {len(offsets) - 1} events, expected {n_events}")
    return offsets, content


def _flat_values(array: Any, name: str, n_events: int) -> np.ndarray:
    try:
        if isinstance(array, ak.Array):
            layout = array.layout
            # uproot gives a flat branch as a NumPy array inside: take it (ak.to_numpy costs ~0.1 ms)
            array = layout.data if isinstance(layout, ak.contents.NumpyArray) else ak.to_numpy(array)
        values = np.asarray(array, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadInputError(f"branch {name!r} must hold one number per event") from None
    if values.ndim != 1:
        raise BadInputError(f"branch {name!r} must hold one number per event, got shape {values.shape}")
    if len(values) != n_events:
        raise BadInputError(f"branch {name!r} has {len(values)} events, expected {n_events}")
    return values
