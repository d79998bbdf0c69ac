"""A model trained once for the inference tests (with a new branch and a cut), and its input files in both
formats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.training.run import run_training
from tests.support.rntuple import to_rntuple
from tests.training.conftest import write_workflow

# A cut that removes about half of the background and little of the signal, and a new branch the model reads.
PREPROC = {
    "new_branch": {"met_ratio": {"def": "MET_pt / (MET_sumEt + 1)", "type": "flat"}},
    "flat_cut": {"MET_pt": {"cut": "MET_pt > 20"}},
}


@dataclass
class Trained:
    models: Path  # the model repository
    name: str
    bundle: Path  # REPO/<name>/1
    inputs: dict[str, dict[str, Path]]  # format -> sample -> file


@pytest.fixture(scope="session")
def trained(sample_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    base = tmp_path_factory.mktemp("inference")
    (base / "preproc.json").write_text(json.dumps(PREPROC))
    workflow = write_workflow(
        base / "workflow", [sample_files["signal"], sample_files["background"]], [1, 0], params={"epochs": 1}
    )
    result = run_training(
        **workflow.kwargs(
            fout=base / "out" / "alice.ttbar", publish=base / "models", preproc=base / "preproc.json"
        )
    )
    names = ("signal", "background")
    (base / "rntuple").mkdir()
    rntuples = {n: to_rntuple(sample_files[n], base / "rntuple" / f"{n}.root") for n in names}
    return Trained(
        models=base / "models",
        name="alice.ttbar",
        bundle=Path(result["published"]),
        inputs={"ttree": {n: sample_files[n] for n in names}, "rntuple": rntuples},
    )
