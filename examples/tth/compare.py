"""The trained model against a cut-based ttH(bb) selection, at the same signal efficiency.

The cut-based selection is the classic one of the ttH(H->bb) semileptonic analyses' most signal-rich
category: at least 6 jets and at least 3 of them b-tagged (CSVv2 medium). The model's selection is a
threshold on its score (from the friend trees ``mlaas4hep predict`` wrote beside the test files), placed so
that it keeps the same fraction of the signal; the two are compared by the background they keep. Both use
the events' ``genWeight`` (signed, NLO-like), and both start from the model's preselection (``nJet >= 4``),
which failed events' ``passed`` branch says.

    python compare.py SIGNAL.root BACKGROUND.root SIGNAL_scores.root BACKGROUND_scores.root --plot roc.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

CSV_MEDIUM = 0.8484
CUTS = {"jets": 6, "btags": 3}
FAILED = -1.0  # the score given to events that the model's preselection removed
CUT_TEXT = f">= {CUTS['jets']} jets, >= {CUTS['btags']} b-tags (CSVv2 > {CSV_MEDIUM})"


def read(sample: Path, friend: Path) -> dict[str, np.ndarray]:
    """The events' weights, the cut-based decision, and the model's score (NaN where it did not pass)."""
    with uproot.open(sample) as handle:
        events = handle["Events"].arrays(["nJet", "Jet_btagCSVV2", "genWeight"])
    with uproot.open(friend) as handle:
        scores = handle["scores"].arrays(library="np")
    (score_name,) = [name for name in scores if name.startswith("score_")]
    if len(scores["entry"]) != len(events):
        raise ValueError(f"{friend.name} has {len(scores['entry'])} entries, {sample.name} {len(events)}")
    btags = ak.to_numpy(ak.sum(events["Jet_btagCSVV2"] > CSV_MEDIUM, axis=1))
    cut = (ak.to_numpy(events["nJet"]) >= CUTS["jets"]) & (btags >= CUTS["btags"])
    # Scores lie in [0, 1]; an event that failed the preselection has none and is never kept.
    score = np.where(scores["passed"], scores[score_name], FAILED).astype(np.float64)
    return {"weight": ak.to_numpy(events["genWeight"]).astype(np.float64), "cut": cut, "score": score}


def efficiency(weight: np.ndarray, kept: np.ndarray) -> float:
    return float(weight[kept].sum() / weight.sum())


def roc(signal: dict[str, np.ndarray], background: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted signal and background efficiencies above each distinct score, highest first, from (0, 0).

    Events of equal score move together (a tie is one step of the curve), and signed weights are summed as
    they are: a negative-weight event lowers the efficiency it belongs to.
    """
    scores = np.concatenate([signal["score"], background["score"]])
    to_signal = np.concatenate(
        [signal["weight"] / signal["weight"].sum(), np.zeros(len(background["score"]))]
    )
    to_background = np.concatenate(
        [np.zeros(len(signal["score"])), background["weight"] / background["weight"].sum()]
    )
    distinct, group = np.unique(-scores, return_inverse=True)
    sig = np.bincount(group, weights=to_signal, minlength=len(distinct))
    bkg = np.bincount(group, weights=to_background, minlength=len(distinct))
    return np.concatenate([[0.0], np.cumsum(sig)]), np.concatenate([[0.0], np.cumsum(bkg)])


def area(signal_efficiency: np.ndarray, background_efficiency: np.ndarray) -> float:
    """The area under the ROC (signal efficiency against background efficiency)."""
    return float(np.trapezoid(signal_efficiency, background_efficiency))


def compare(signal: dict[str, np.ndarray], background: dict[str, np.ndarray]) -> dict[str, Any]:
    """The cut-based selection's efficiencies, and the model's background at the same signal efficiency."""
    cut_signal = efficiency(signal["weight"], signal["cut"])
    cut_background = efficiency(background["weight"], background["cut"])
    # The model's threshold: the score above which the weighted signal fraction reaches the cut's.
    order = np.argsort(-signal["score"], kind="stable")
    kept_fraction = np.cumsum(signal["weight"][order]) / signal["weight"].sum()
    threshold = float(signal["score"][order][np.searchsorted(kept_fraction, cut_signal)])
    ml_signal = efficiency(signal["weight"], signal["score"] >= threshold)
    ml_background = efficiency(background["weight"], background["score"] >= threshold)
    sig_eff, bkg_eff = roc(signal, background)
    return {
        "cut_based": {
            "selection": CUT_TEXT,
            "signal_efficiency": cut_signal,
            "background_efficiency": cut_background,
        },
        "model": {
            "threshold": threshold,
            "signal_efficiency": ml_signal,
            "background_efficiency": ml_background,
        },
        "background_ratio": ml_background / cut_background if cut_background else None,
        "auc": area(sig_eff, bkg_eff),
        "events": {"signal": len(signal["score"]), "background": len(background["score"])},
    }


def plot(
    signal: dict[str, np.ndarray], background: dict[str, np.ndarray], result: dict[str, Any], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sig_eff, bkg_eff = roc(signal, background)
    figure, axis = plt.subplots(figsize=(5, 4), dpi=100)
    axis.plot(sig_eff, bkg_eff, label=f"MLaaS4HEP model (AUC {result['auc']:.3f})")
    cut = result["cut_based"]
    axis.plot(
        cut["signal_efficiency"],
        cut["background_efficiency"],
        "o",
        color="C3",
        label=f"cut-based: {CUT_TEXT}",
    )
    model = result["model"]
    axis.plot(
        model["signal_efficiency"],
        model["background_efficiency"],
        "s",
        color="C2",
        label="model at the same signal efficiency",
    )
    axis.set_yscale("log")
    axis.set_xlim(0, 1)
    axis.set_ylim(1e-3, 1.05)
    axis.set_xlabel("ttH signal efficiency (genWeight-weighted)")
    axis.set_ylabel("ttbar background efficiency")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.part.png")
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(path)


def describe(result: dict[str, Any]) -> str:
    cut, model = result["cut_based"], result["model"]
    rows = [
        ("selection", "signal eff", "bkg eff"),
        (
            f"cut-based: {cut['selection']}",
            f"{cut['signal_efficiency']:.3f}",
            f"{cut['background_efficiency']:.4f}",
        ),
        (
            f"model: score >= {model['threshold']:.3f}",
            f"{model['signal_efficiency']:.3f}",
            f"{model['background_efficiency']:.4f}",
        ),
    ]
    lines = [f"{name:<56} {signal:>10} {background:>9}" for name, signal, background in rows]
    ratio = result["background_ratio"]
    lines.append(f"background kept by the model / by the cuts: {ratio:.3f}; model AUC {result['auc']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("signal", "background", "signal_friend", "background_friend"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--plot", type=Path, help="write the ROC with the cut-based point here (PNG)")
    args = parser.parse_args()
    signal, background = read(args.signal, args.signal_friend), read(args.background, args.background_friend)
    result = compare(signal, background)
    if args.plot:
        plot(signal, background, result, args.plot)
    print(describe(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
