"""``mlaas4hep predict`` as a user runs it: a subprocess on Dask's local cluster (threads, or processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import uproot

pytestmark = pytest.mark.slow


def predict(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_by_model_name_on_worker_processes(trained, tmp_path):
    files = tmp_path / "files.txt"
    files.write_text("".join(f"{trained.inputs[form]['signal']}\n" for form in ("ttree", "rntuple")))
    options = ["--workers", 2, "--processes", "--task-entries", 1000]
    model = ["--model", trained.name, "--models-dir", trained.models]
    result = predict("--files", files, *model, "--fout", tmp_path / "out", *options)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == trained.name and summary["version"] == 1
    assert summary["events"] == 6000 and summary["files"] == 2
    # Both inputs are named signal.root: their friends carry their position in the list.
    trees = [uproot.open(tmp_path / "out" / f"signal_{i}_scores.root")["scores"] for i in (0, 1)]
    scores = [t["score_1"].array(library="np") for t in trees]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert [t.num_entries for t in trees] == [3000, 3000]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "alice.nothing"], "model 'alice.nothing' not found in the model repository"),
        (["--model", "alice.ttbar/7"], "model 'alice.ttbar/7' not found"),
        (["--model", "alice.ttbar/x"], "model version must be a positive integer"),
        (["--bundle", "."], "is not a model bundle"),
    ],
)
def test_bad_model_names_exit_2_with_one_line(args, message, trained, tmp_path):
    files = tmp_path / "files.txt"
    files.write_text(f"{trained.inputs['ttree']['signal']}\n")
    result = predict("--files", files, "--models-dir", trained.models, "--fout", tmp_path / "out", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mlaas4hep predict: error: {result.stderr.split(': error: ')[1].strip()}"
    ]
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_branches_exit_2_and_nothing_is_written(trained, tmp_path):
    lacking = tmp_path / "lacking.root"
    with uproot.recreate(lacking) as f:
        f["Events"] = {"MET_pt": np.ones(5)}
    files = tmp_path / "files.txt"
    files.write_text(f"{trained.inputs['ttree']['signal']}\n{lacking}\n")
    result = predict("--files", files, "--bundle", trained.bundle, "--fout", tmp_path / "out", "--workers", 1)
    assert result.returncode == 2, result.stderr
    assert (
        "lack branch(es)" in result.stderr and "Jet_pt" in result.stderr and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
