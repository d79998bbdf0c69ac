"""Pass 1: statistics of every feature branch, and the specs file that caches them.

The specs file records a fingerprint of everything the statistics depend on (files, tree, branch selection,
preprocessing, event count, layout options). A specs file whose fingerprint differs from the current inputs is
never reused: it is recomputed and rewritten, unlike the original's silently reused ``global-specs.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from appliance.data.features import FORMAT, BranchStats, FeatureSpec
from appliance.data.sources import Source, column_kinds, column_type, entry_shares, iterate, open_tree
from appliance.data.targets import file_factors, raw_weights
from appliance.data.workflow import Cut, Workflow
from servicecore import atomic
from servicecore.errors import BadInputError

log = logging.getLogger(__name__)


@dataclass
class _Accumulator:
    """Running min, max, moments and list-length histogram of one branch, updated a chunk at a time."""

    kind: str
    min: float = np.inf
    max: float = -np.inf
    total: float = 0.0
    total_sq: float = 0.0
    count: int = 0
    nonfinite: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    def add(self, array: Any) -> None:
        if self.kind == "jagged":
            counts = np.asarray(ak.num(array, axis=1), dtype=np.int64)
            histogram = np.bincount(counts)
            if len(histogram) > len(self.lengths):
                histogram[: len(self.lengths)] += self.lengths
                self.lengths = histogram
            else:
                self.lengths[: len(histogram)] += histogram
            array = ak.flatten(array, axis=1)
        values = np.asarray(ak.to_numpy(array) if isinstance(array, ak.Array) else array, dtype=np.float64)
        finite = np.isfinite(values)
        self.nonfinite += int(values.size - np.count_nonzero(finite))
        values = values[finite]
        if values.size:
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))
            self.total += float(values.sum())
            self.total_sq += float(np.dot(values, values))
            self.count += int(values.size)

    def stats(self, name: str) -> BranchStats:
        mean = self.total / self.count if self.count else 0.0
        variance = max(self.total_sq / self.count - mean * mean, 0.0) if self.count else 0.0
        max_length = int(np.flatnonzero(self.lengths).max()) if self.lengths.any() else 0
        return BranchStats(
            name=name,
            kind=self.kind,
            min=float(self.min) if self.count else 0.0,
            max=float(self.max) if self.count else 0.0,
            mean=mean,
            std=float(np.sqrt(variance)),
            count=self.count,
            nonfinite=self.nonfinite,
            max_length=max_length if self.kind == "jagged" else 0,
            length_counts=self.lengths[: max_length + 1].tolist() if self.kind == "jagged" else [],
        )


def fingerprint_inputs(wf: Workflow) -> dict[str, Any]:
    """Everything the statistics depend on. Local files contribute their size and modification time."""
    files = []
    for url in wf.files:
        entry: dict[str, Any] = {"url": url}
        if Path(url).is_file():
            st = Path(url).stat()
            entry |= {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        files.append(entry)
    p = wf.params
    return {
        "format": FORMAT,
        "files": files,
        "tree": wf.tree,
        "labels": wf.labels,
        "label_branch": wf.label_branch,
        "selected_branches": p.selected_branches,
        "exclude_branches": p.exclude_branches,
        "identifier": p.identifier,
        "nevts": p.nevts,
        "normalisation": p.normalisation,
        "nan": p.nan,
        "jagged_length": p.jagged_length,
        "mask": p.mask,
        "preproc": wf.preproc_source,
        "weight": p.weight,
        "cross_section": p.cross_section,
        "luminosity": p.luminosity,
        "file_weight": p.file_weight,
        "negative_weights": p.negative_weights,
        "target": p.target,
    }


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def load_or_compute_specs(wf: Workflow) -> FeatureSpec:
    """Reuse the specs file when it was made from exactly these inputs; otherwise run pass 1 and write it."""
    inputs = fingerprint_inputs(wf)
    key = fingerprint(inputs)
    path = wf.specs_path
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cached = {}
        if isinstance(cached, dict) and cached.get("fingerprint") == key:
            log.info("reusing specs from %s", path)
            spec = FeatureSpec.from_dict(cached["features"])
            # Specs files written before the cuts were recorded: the fingerprint proves they are these.
            spec.dataset.setdefault("preproc", wf.preproc_source)
            return spec
        log.warning("specs file %s was made from other inputs; recomputing it", path)
    spec = compute_specs(wf)
    if path is not None:
        atomic.write_json(path, {"fingerprint": key, "inputs": inputs, "features": spec.to_dict()})
    return spec


def plan_sources(wf: Workflow) -> tuple[list[Source], list[tuple[str, str]], list[str]]:
    """Open every file, check the tree and branches, and decide which branches are features.

    Returns the sources, the feature branches as (name, kind) in tree order with new branches last, and the
    raw branches to read from the files.
    """
    trees = [open_tree(url, wf.tree) for url in wf.files]
    kinds = column_kinds(trees[0])
    available = list(kinds)
    for url, tree in zip(wf.files[1:], trees[1:], strict=True):
        present = column_kinds(tree)
        missing = [n for n in available if n not in present]
        if missing:
            raise BadInputError(f"{url!r} lacks branch(es) {', '.join(missing[:5])} that {wf.files[0]!r} has")
    referenced = wf.preproc.referenced_branches
    if wf.label_branch:
        referenced = referenced | {wf.label_branch}
    referenced = referenced | (wf.truth_branches - set(wf.preproc.new_branches))
    unknown = sorted(n for n in referenced if n not in kinds)
    if unknown:
        raise BadInputError(
            f"branch(es) {', '.join(map(repr, unknown))} not found in tree {wf.tree!r} of {wf.files[0]!r}"
        )
    check_truth_kinds(wf, kinds)
    named = referenced | {n for n in wf.params.selected_branches if n in kinds}
    refuse_unsupported(trees[0], wf.files[0], sorted(n for n in named if kinds[n] is None))
    if wf.label_branch and kinds[wf.label_branch] != "flat":
        raise BadInputError(f"label branch {wf.label_branch!r} must hold one number per event")
    chosen = wf.select(available)
    skipped = [n for n in chosen if kinds[n] is None]
    if skipped:
        log.info("skipping branches a model cannot take (not numbers): %s", ", ".join(skipped))
    features = [(n, kinds[n]) for n in chosen if kinds[n] is not None]
    features += [
        (n, d["type"])
        for n, d in wf.preproc.new_branches.items()
        if n not in wf.preproc.removed and n not in wf.truth_branches
    ]
    if not features:
        raise BadInputError(
            "the branch selection is empty: selected_branches, exclude_branches and identifier "
            f"leave no numeric branch of tree {wf.tree!r}"
        )
    raw = [n for n, _ in features if n not in wf.preproc.new_branches]
    raw += sorted((referenced - set(raw)) - set(wf.preproc.new_branches))
    entries = [int(t.num_entries) for t in trees]
    stops = entry_shares(entries, wf.params.nevts)
    labels = wf.labels or [None] * len(trees)
    sources = [
        Source(i, url, e, s, lab)
        for i, (url, e, s, lab) in enumerate(zip(wf.files, entries, stops, labels, strict=True))
    ]
    return sources, features, raw


def check_truth_kinds(wf: Workflow, kinds: dict[str, str | None]) -> None:
    """The weight expression and the regression targets read flat numeric branches (or flat new branches)."""

    def kind(name: str) -> str | None:
        definition = wf.preproc.new_branches.get(name)
        return definition["type"] if definition else kinds.get(name)

    expression = wf.params.weight_expression
    for name in sorted(expression.names) if expression is not None else []:
        if kind(name) != "flat":
            holds = "a list per event" if kind(name) == "jagged" else "no numbers"
            raise BadInputError(
                f"weight expression {wf.params.weight!r} is not numeric per event: branch {name!r} holds "
                f"{holds}; a weight is one number per event"
            )
    for name in wf.params.target:
        if kind(name) == "jagged":
            raise BadInputError(
                f"regression target {name!r} is jagged (a list per event); a target must be one number per "
                "event (define one with a new_branch of preproc.json, e.g. a leading-jet value)"
            )
        if kind(name) != "flat":
            raise BadInputError(f"regression target {name!r} does not hold numbers")


def refuse_unsupported(tree: Any, url: str, names: list[str]) -> None:
    """A branch or field the user asked for by name but that holds no numbers (or nested lists) is refused,
    naming it and its type; with the default selection such columns are skipped instead, as strings are."""
    if names:
        listed = ", ".join(f"{name!r} ({column_type(tree, name)})" for name in names)
        raise BadInputError(
            f"{url!r}: unsupported type for branch(es) {listed}: a feature, cut or label must hold one "
            "number or a list of numbers per event"
        )


def select_events(
    wf: Workflow, spec_like: FeatureSpec, arrays: dict[str, Any]
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Add the new branches and apply the cuts of ``preproc.json`` to one chunk (vectorised).

    Returns the selected columns and the boolean mask of kept events (None when there is no cut).
    """
    columns, keep = passing_events(wf.preproc.cuts, spec_like, arrays)
    if keep is None:
        return columns, None
    return {name: values[keep] for name, values in columns.items()}, keep


def passing_events(
    cuts: list[Cut], spec_like: FeatureSpec, arrays: dict[str, Any]
) -> tuple[dict[str, Any], np.ndarray | None]:
    """All columns of one chunk with the new branches added, and the mask of events that pass ``cuts``
    (None when there is no cut). Batch inference keeps every event and flags those that fail."""
    columns = spec_like.add_new_branches(arrays)
    if not cuts:
        return columns, None
    n = len(next(iter(columns.values())))
    keep = np.ones(n, dtype=bool)
    for cut in cuts:
        passed = cut.expression.evaluate(lambda name: columns[name])
        if cut.reduce:
            passed = ak.all(passed, axis=1) if cut.reduce == "all" else ak.any(passed, axis=1)
        keep &= np.asarray(ak.to_numpy(passed) if isinstance(passed, ak.Array) else passed, dtype=bool)
    return columns, keep


def compute_specs(wf: Workflow) -> FeatureSpec:
    started = time.monotonic()
    sources, features, raw = plan_sources(wf)
    definitions = FeatureSpec([], [], new_branches=wf.preproc.new_branches)
    accumulators = {name: _Accumulator(kind) for name, kind in features}
    label_values: dict[int, int] = {}
    selected_per_file = []
    chunk = wf.params.chunk_size if wf.params.chunk_size > 0 else 1_000_000
    read = raw + ([wf.label_branch] if wf.label_branch and wf.label_branch not in raw else [])
    weight_sums = WeightSums(len(sources)) if wf.params.weight_expression is not None else None
    for source in sources:
        tree = open_tree(source.url, wf.tree)
        selected = 0
        for _, arrays in iterate(tree, read, chunk, 0, source.entry_stop, source.url):
            full, keep = passing_events(wf.preproc.cuts, definitions, arrays)
            columns = full if keep is None else {name: values[keep] for name, values in full.items()}
            if weight_sums is not None:
                weight_sums.add(source.index, raw_weights(wf, full, source.url), keep)
            for name, accumulator in accumulators.items():
                accumulator.add(columns[name])
            if wf.label_branch:
                values, counts = np.unique(np.asarray(columns[wf.label_branch]), return_counts=True)
                for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                    label_values[value] = label_values.get(value, 0) + count
            selected += len(columns[features[0][0]])
        selected_per_file.append(selected)
    if sum(selected_per_file) == 0:
        raise BadInputError(
            "no event passes the cuts of preproc.json"
            if wf.preproc.cuts
            else "the input files hold no events"
        )
    if weight_sums is not None:
        weight_sums.check_negative(wf, sources)
    stats = {name: acc.stats(name) for name, acc in accumulators.items()}
    for name, kind in features:
        if kind == "jagged":
            stats[name].length = jagged_length(wf.params.jagged_length, stats[name])
    class_counts, class_values = _class_counts(wf, sources, selected_per_file, label_values)
    spec = FeatureSpec(
        flat=[stats[n] for n, k in features if k == "flat"],
        jagged=[stats[n] for n, k in features if k == "jagged"],
        normalisation=wf.params.normalisation,
        nan_value=float(wf.params.nan),
        mask=wf.params.mask,
        new_branches=wf.preproc.new_branches,
        dataset={
            "tree": wf.tree,
            "files": [
                {"url": s.url, "entries": s.entries, "read": s.entry_stop, "selected": n}
                for s, n in zip(sources, selected_per_file, strict=True)
            ],
            "events": int(sum(selected_per_file)),
            "class_names": wf.class_names or [_label_name(v) for v in class_values],
            "class_values": class_values,
            "class_counts": class_counts,
            "label_branch": wf.label_branch,
            "read_branches": read,
            "preproc": wf.preproc_source,
            "weights": weight_sums.document(wf) if weight_sums is not None else None,
            "targets": list(wf.params.target),
            "pass1_seconds": round(time.monotonic() - started, 3),
        },
    )
    log.info(
        "pass 1: %d events, %d features in %.1f s",
        spec.dataset["events"],
        spec.dim,
        spec.dataset["pass1_seconds"],
    )
    return spec


def _label_name(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class WeightSums:
    """Pass 1's sums of the weight expression per file: of every event read (normalising cross_section) and
    of the selected events, with the count of negative ones."""

    def __init__(self, n_files: int) -> None:
        self.read = np.zeros(n_files)
        self.selected = np.zeros(n_files)
        self.negative = np.zeros(n_files, dtype=np.int64)

    def add(self, index: int, weights: np.ndarray | None, keep: np.ndarray | None) -> None:
        assert weights is not None
        self.read[index] += float(weights.sum())
        kept = weights if keep is None else weights[keep]
        self.selected[index] += float(kept.sum())
        self.negative[index] += int(np.count_nonzero(kept < 0))

    def check_negative(self, wf: Workflow, sources: list[Source]) -> None:
        """Refuse negative weights before any training when the loss would refuse them (the default)."""
        if wf.params.negative_weights != "refuse" or not self.negative.any():
            return
        first = int(np.flatnonzero(self.negative)[0])
        raise BadInputError(
            f"{sources[first].url}: {int(self.negative[first])} selected event(s) have a negative weight "
            f"({wf.params.weight!r}; {int(self.negative.sum())} in all files); the loss needs weights >= 0: "
            'set negative_weights to "abs" or "zero", or cut those events'
        )

    def document(self, wf: Workflow) -> dict[str, Any]:
        factors = file_factors(wf, self.read)
        return {
            "expression": wf.params.weight,
            "sum_read": self.read.tolist(),
            "sum_selected": self.selected.tolist(),
            "negative_selected": self.negative.tolist(),
            "file_factor": factors.tolist(),
            "negative_weights": wf.params.negative_weights,
        }


def _class_counts(
    wf: Workflow, sources: list[Source], selected: list[int], label_values: dict[Any, int]
) -> tuple[list[int], list[float]]:
    if wf.params.regression:
        return [], []
    if wf.label_branch:
        values = sorted(label_values)
        if len(values) < 2:
            raise BadInputError(
                f"label branch {wf.label_branch!r} holds a single class ({values}); "
                "training needs at least two"
            )
        if len(values) > 1000:
            raise BadInputError(
                f"label branch {wf.label_branch!r} has {len(values)} distinct values; labels must be classes"
            )
        return [label_values[v] for v in values], values
    counts = [0] * len(wf.class_names)
    for source, n in zip(sources, selected, strict=True):
        counts[source.label] += n
    if sum(1 for c in counts if c) < 2:
        raise BadInputError("after the cuts only one class has events; training needs at least two")
    return counts, []


def jagged_length(setting: Any, stats: BranchStats) -> int:
    """Padded length of a jagged branch: the longest list, a quantile of list lengths, or a given number."""
    if isinstance(setting, dict):
        setting = setting.get(stats.name, "max")
    if isinstance(setting, int):
        return setting
    if setting == "max":
        return stats.max_length
    quantile = float(setting[1:]) / 100.0
    counts = np.asarray(stats.length_counts, dtype=np.float64)
    if counts.sum() == 0:
        return 0
    cumulative = np.cumsum(counts) / counts.sum()
    return int(np.searchsorted(cumulative, quantile - 1e-12))
