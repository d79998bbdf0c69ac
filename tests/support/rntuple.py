"""RNTuple copies of the tests' TTree files, written with uproot (``mkrntuple``), so every reading path can be
checked on the same values in both formats."""

from __future__ import annotations

from pathlib import Path

import uproot


def to_rntuple(source: Path, destination: Path, tree: str = "Events", step: int = 2000) -> Path:
    """Copy the TTree ``tree`` of ``source`` into an RNTuple of the same name, field for branch.

    uproot's counter branches (``nJet`` beside ``Jet_pt``) are kept as ordinary fields, as a TTree reader sees
    them. Several clusters are written (one per ``step`` entries) so that reads cross cluster boundaries.
    """
    with uproot.open(source) as handle:
        ttree = handle[tree]
        with uproot.recreate(destination) as out:
            ntuple = None
            for arrays in ttree.iterate(step_size=step, library="ak", how=dict):
                if ntuple is None:
                    ntuple = out.mkrntuple(tree, arrays)
                else:
                    ntuple.extend(arrays)
    return destination
