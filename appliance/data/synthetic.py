"""Synthetic NanoAOD-like ROOT files for demos, tests and benchmarks.

The files are TTrees written with ``mktree``/``extend``, as experiments ship them, with the naming of CMS
NanoAOD: identifier branches (``run``, ``luminosityBlock``, ``event``), flat event variables and jagged
collections whose sizes live in ``n<Collection>`` counters. ``shift`` moves every physics distribution, so a
"signal" file with ``shift > 0`` is separable from a "background" file with ``shift = 0``, and two files with
the same shift are statistically identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

COLLECTIONS: dict[str, tuple[str, ...]] = {
    "Jet": ("pt", "eta", "phi", "mass", "btagDeepB", "qgl", "chHEF", "neHEF", "area", "jetId"),
    "Muon": ("pt", "eta", "phi", "mass", "pfRelIso03_all", "dxy", "dz", "charge", "tightId", "sip3d"),
    "Electron": ("pt", "eta", "phi", "mass", "pfRelIso03_all", "dxy", "dz", "charge", "cutBased", "r9"),
    "Tau": ("pt", "eta", "phi", "mass", "dxy", "dz", "charge", "decayMode", "rawIso", "leadTkPtOverTauPt"),
}
FLAT_VARIABLES: tuple[str, ...] = (
    "MET_pt",
    "MET_phi",
    "MET_sumEt",
    "MET_significance",
    "PuppiMET_pt",
    "PuppiMET_phi",
    "CaloMET_pt",
    "CaloMET_phi",
    "RawMET_pt",
    "RawMET_phi",
    "PV_npvs",
    "PV_npvsGood",
    "PV_x",
    "PV_y",
    "PV_z",
    "PV_chi2",
    "fixedGridRhoFastjetAll",
    "HT",
    "genWeight",
)
IDENTIFIERS: tuple[str, ...] = ("run", "luminosityBlock", "event")
MEAN_MULTIPLICITY = {"Jet": 4.0, "Muon": 1.2, "Electron": 1.0, "Tau": 0.8}


@dataclass(frozen=True)
class SyntheticSchema:
    """How many branches of each kind a generated file carries."""

    n_flat: int = 20
    n_jagged: int = 40

    def flat_names(self) -> list[str]:
        # Counters count as flat branches: NanoAOD has one per collection.
        counters = [f"n{c}" for c in COLLECTIONS]
        names = counters + list(FLAT_VARIABLES)
        if self.n_flat > len(names):
            names += [f"Extra_var{i}" for i in range(self.n_flat - len(names))]
        return names[: self.n_flat]

    def jagged_names(self) -> list[tuple[str, str]]:
        pairs = [(c, f"{c}_{v}") for c, fields in COLLECTIONS.items() for v in fields]
        if self.n_jagged > len(pairs):
            raise ValueError(f"at most {len(pairs)} jagged branches can be generated")
        return pairs[: self.n_jagged]


def generate_events(n_events: int, shift: float, seed: int, schema: SyntheticSchema) -> dict[str, object]:
    """Generate ``n_events`` events as a dict of branch name to NumPy or awkward array."""
    rng = np.random.default_rng(seed)
    out: dict[str, object] = {
        "run": np.full(n_events, 1, dtype=np.int32),
        "luminosityBlock": (np.arange(n_events) // 1000 + 1).astype(np.int32),
        "event": (np.arange(n_events, dtype=np.int64) + seed * 10_000_000).astype(np.uint64),
    }
    jagged = schema.jagged_names()
    used = {c for c, _ in jagged} | {n[1:] for n in schema.flat_names() if n[1:] in COLLECTIONS}
    counts = {
        c: rng.poisson(MEAN_MULTIPLICITY[c] * (1.0 + 0.25 * shift), n_events).astype(np.int32)
        for c in sorted(used)
    }
    for name in schema.flat_names():
        if name.startswith("n") and name[1:] in counts:
            out[name] = counts[name[1:]].astype(np.uint32)
        else:
            out[name] = (rng.normal(1.0 + shift, 1.0, n_events) * 10.0).astype(np.float32)
    for collection, name in jagged:
        n_items = counts[collection]
        values = rng.exponential(20.0 * (1.0 + 0.5 * shift), int(n_items.sum())).astype(np.float32)
        out[name] = ak.unflatten(values, n_items)
    return out


def write_root_file(
    path: str | os.PathLike[str],
    n_events: int,
    *,
    shift: float = 0.0,
    seed: int = 0,
    schema: SyntheticSchema | None = None,
    tree: str = "Events",
    basket_events: int = 100_000,
) -> Path:
    """Write a NanoAOD-like TTree file and return its path. Memory stays bounded by ``basket_events``."""
    schema = schema or SyntheticSchema()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with uproot.recreate(tmp) as f:
        written = 0
        basket = 0
        while written < n_events:
            n = min(basket_events, n_events - written)
            events = generate_events(n, shift, seed * 1000 + basket, schema)
            if basket == 0:
                f.mktree(tree, _branch_types(events, schema))
            f[tree].extend(_rename_counters(events, schema))
            written += n
            basket += 1
    tmp.replace(path)
    return path


# The small schema and the separable pair the tests and benches train on: a shifted "signal", a "background".
SAMPLE_SCHEMA = SyntheticSchema(n_flat=8, n_jagged=6)
SAMPLE_PAIR = (("signal", 3000, 1.0, 1), ("background", 5000, 0.0, 2))  # (name, events, shift, seed)


def write_sample_pair(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """``signal.root`` and ``background.root`` of :data:`SAMPLE_PAIR` in ``directory``, by name."""
    return {
        name: write_root_file(
            Path(directory) / f"{name}.root", n, shift=shift, seed=seed, schema=SAMPLE_SCHEMA
        )
        for name, n, shift, seed in SAMPLE_PAIR
    }


def _branch_types(events: dict[str, object], schema: SyntheticSchema) -> dict[str, object]:
    types: dict[str, object] = {}
    for name, values in _rename_counters(events, schema).items():
        types[name] = values.type if isinstance(values, ak.Array) else values.dtype
    return types


def _rename_counters(events: dict[str, object], schema: SyntheticSchema) -> dict[str, object]:
    """uproot writes a jagged branch with its own counter ``n<branch>``; group each collection instead.

    Given an awkward record array per collection (``Jet`` with fields ``pt``, ``eta``…), ``extend`` writes it
    NanoAOD-style: one counter ``nJet`` and branches ``Jet_pt``, ``Jet_eta``….
    """
    flat = {k: v for k, v in events.items() if not isinstance(v, ak.Array)}
    collections: dict[str, dict[str, ak.Array]] = {}
    for collection, name in schema.jagged_names():
        collections.setdefault(collection, {})[name[len(collection) + 1 :]] = events[name]
    for collection, fields in collections.items():
        flat.pop(f"n{collection}", None)
        flat[collection] = ak.zip(fields)
    return flat
