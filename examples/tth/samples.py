"""NanoAOD-shaped ttH(bb) and ttbar samples, generated with uproot, for the ttH example.

The CMS open-data NanoAOD file in ``../shared/data`` (200 ttbar events) is too small to train on, so the
example generates its own, with the real NanoAOD branch names and value types (``Jet_pt`` float32 lists,
``Jet_btagCSVV2`` float32 with -10 for jets without b-tag information, ``MET_pt``, ``genWeight``, ``run``
uint32, ``event`` uint64, ...; ``check_against`` compares them with the real file). The counters ``nJet``,
``nMuon``, ``nElectron`` are int32, as uproot writes counters (NanoAOD's are uint32).

The physics is a caricature, but the one the ttH(bb) analyses exploit: semileptonic ttbar has two b quarks
and about four jets, ttH(H->bb) four b quarks and more, harder jets; one isolated lepton in both. Jets are
b-tagged with the CSVv2 medium working point's efficiency (about 70 %) and mistag rate (about 2 %). The
generator weights are NLO-like: one magnitude per process, a few per cent negative.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

CSV_MEDIUM = 0.8484  # CMS CSVv2 medium working point (2016)
PROCESSES = {
    #         b quarks, extra jets (mean), jet pT scale, MET scale, |genWeight|, negative fraction
    "tth": dict(b_quarks=4, extra_jets=2.2, jet_scale=58.0, met_scale=55.0, weight=0.2934, negative=0.02),
    "ttbar": dict(
        b_quarks=2, extra_jets=2.0, jet_scale=48.0, met_scale=48.0, weight=225892.45, negative=0.01
    ),
}
BRANCHES = (
    "run", "luminosityBlock", "event", "genWeight", "MET_pt", "MET_phi",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2",
    "Muon_pt", "Muon_eta", "Muon_phi", "Muon_tightId",
    "Electron_pt", "Electron_eta", "Electron_phi", "Electron_cutBased",
)  # fmt: skip


def generate(process: str, events: int, seed: int) -> dict[str, object]:
    """The branches of ``events`` events of ``process`` (``tth`` or ``ttbar``), as arrays for uproot."""
    p = PROCESSES[process]
    rng = np.random.default_rng(seed)
    n_jets = 2 + p["b_quarks"] + rng.poisson(p["extra_jets"], events)
    n_jets = np.minimum(n_jets - rng.binomial(2, 0.25, events), 12)  # some jets fall out of acceptance
    total = int(n_jets.sum())
    pt = (25.0 + rng.exponential(p["jet_scale"], total)).astype(np.float32)
    # The first b_quarks jets of each event are b jets (before sorting by pT).
    position = np.arange(total) - np.repeat(np.cumsum(n_jets) - n_jets, n_jets)
    is_b = position < p["b_quarks"]
    pt = np.where(is_b, pt * np.float32(1.15), pt)
    tagged = np.where(is_b, rng.random(total) < 0.70, rng.random(total) < 0.02)
    csv = np.where(tagged, rng.uniform(CSV_MEDIUM, 1.0, total), rng.beta(1.3, 5.0, total) * CSV_MEDIUM)
    csv = np.where(rng.random(total) < 0.08, -10.0, csv).astype(np.float32)  # no b-tag information
    jets = {
        "pt": pt,
        "eta": np.clip(rng.normal(0, 1.3, total), -2.4, 2.4).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, total).astype(np.float32),
        "mass": (pt * rng.uniform(0.08, 0.16, total)).astype(np.float32),
        "btagCSVV2": csv,
    }
    jagged = {key: ak.unflatten(value, n_jets) for key, value in jets.items()}
    order = ak.argsort(jagged["pt"], ascending=False)
    jet = ak.zip({key: value[order] for key, value in jagged.items()})

    muon_event = rng.random(events) < 0.5
    lepton_pt = (26.0 + rng.exponential(p["jet_scale"] * 0.55, events)).astype(np.float32)
    muons = _lepton(rng, lepton_pt, muon_event)
    muons["tightId"] = ak.values_astype(muons["pt"] > 0, bool)
    electrons = _lepton(rng, lepton_pt, ~muon_event)
    electrons["cutBased"] = ak.values_astype(ak.ones_like(electrons["pt"]) * 4, np.int32)  # tight

    weight = np.where(rng.random(events) < p["negative"], -p["weight"], p["weight"]).astype(np.float32)
    return {
        "run": np.ones(events, np.uint32),
        "luminosityBlock": (np.arange(events) // 1000 + 1).astype(np.uint32),
        "event": np.arange(1, events + 1, dtype=np.uint64) + np.uint64(seed) * np.uint64(10_000_000),
        "genWeight": weight,
        "MET_pt": rng.exponential(p["met_scale"], events).astype(np.float32),
        "MET_phi": rng.uniform(-np.pi, np.pi, events).astype(np.float32),
        "Jet": jet,
        "Muon": ak.zip(muons),
        "Electron": ak.zip(electrons),
    }


def _lepton(rng: np.random.Generator, pt: np.ndarray, present: np.ndarray) -> dict[str, ak.Array]:
    counts = present.astype(np.int64)
    n = int(counts.sum())
    return {
        "pt": ak.unflatten(pt[present], counts),
        "eta": ak.unflatten(np.clip(rng.normal(0, 1.1, n), -2.4, 2.4).astype(np.float32), counts),
        "phi": ak.unflatten(rng.uniform(-np.pi, np.pi, n).astype(np.float32), counts),
    }


def write_sample(path: Path, process: str, events: int, seed: int) -> Path:
    """One NanoAOD-shaped file (TTree ``Events``), written whole (to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    data = generate(process, events, seed)
    # mktree/extend: a TTree as NanoAOD ships (assigning a dict would write an RNTuple); a record array per
    # collection gives one counter nJet and branches Jet_pt, Jet_eta, ...
    types = {name: value.type if isinstance(value, ak.Array) else value.dtype for name, value in data.items()}
    with uproot.recreate(temporary) as out:
        out.mktree("Events", types)
        out["Events"].extend(data)
    temporary.replace(path)
    return path


def check_against(generated: Path, real: Path) -> list[str]:
    """Branches of ``generated`` whose name is not in the real NanoAOD file or whose type differs there
    (counters aside); an empty list means they all match."""
    with uproot.open(generated) as mine, uproot.open(real) as theirs:
        ours, reference = mine["Events"], theirs["Events"]
        problems = []
        for name in BRANCHES:
            if name not in reference:
                problems.append(f"{name}: not in {real.name}")
            elif ours[name].typename != reference[name].typename:
                problems.append(f"{name}: {ours[name].typename} here, {reference[name].typename} there")
        return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder for tth_<seed>.root and ttbar_<seed>.root")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for index, process in enumerate(PROCESSES):
        path = write_sample(
            args.output / f"{process}_{args.seed}.root", process, args.events, args.seed * 2 + index
        )
        print(path)


if __name__ == "__main__":
    main()
