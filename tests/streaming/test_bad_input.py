"""Every bad input gives one clear message naming the culprit, and exit code 2 from the command line."""

import json
import os
import subprocess
import sys

import pytest

from appliance.data.specs import load_or_compute_specs
from appliance.data.workflow import load_workflow
from servicecore.errors import BadInputError
from tests.streaming.conftest import write_workflow
from tests.support.processes import free_port


def check(paths):
    wf = load_workflow(paths["files"], paths["labels"], paths["params"], paths["preproc"], paths["specs"])
    return load_or_compute_specs(wf)


def run_read(paths):
    argv = [sys.executable, "-m", "appliance", "read", "--quiet"]
    for key in ("files", "labels", "params", "preproc"):
        if paths[key]:
            argv += [f"--{key}", paths[key]]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": "."}
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", r"input file '.*nowhere\.root' does not exist locally"),
        ("unknown_branch", r"selected_branches: no branch named 'Jet_ptt'"),
        ("unknown_tree", r"tree 'Evnts' not found in '.*signal\.root'; trees there: Events"),
        ("empty_selection", r"the branch selection is empty"),
        ("labels_length", r"labels: 3 label\(s\) for 2 file\(s\)"),
        ("malformed_params", r"params.*is not valid JSON"),
        ("unknown_param", r"unknown key\(s\) epoks"),
        ("bad_param_type", r"epochs must be an integer"),
        ("single_class", r"every file has the label '1'"),
        ("bad_expression", r"function 'system' is not allowed"),
        ("unknown_cut_branch", r"branch\(es\) 'nLeptons' not found in tree 'Events'"),
        ("not_root", r"is not a ROOT file"),
        ("missing_labels", r"labels file '.*labelz\.txt' does not exist"),
    ],
)
def test_bad_workflow_input(case, message, sample_files, tmp_path):
    files = [sample_files["signal"], sample_files["background"]]
    params, preproc, labels = {}, None, "1\n0\n"
    if case == "missing_file":
        files = [files[0], tmp_path / "nowhere.root"]
    elif case == "unknown_branch":
        params = {"selected_branches": ["MET_pt", "Jet_ptt"]}
    elif case == "unknown_tree":
        params = {"branch": "Evnts"}
    elif case == "empty_selection":
        params = {"selected_branches": ["run", "event"]}
    elif case == "labels_length":
        labels = "1\n0\n1\n"
    elif case == "unknown_param":
        params = {"epoks": 3}
    elif case == "bad_param_type":
        params = {"epochs": "five"}
    elif case == "single_class":
        labels = "1\n1\n"
    elif case == "bad_expression":
        preproc = {"new_branch": {"y": {"def": "system('ls')", "type": "flat"}}}
    elif case == "unknown_cut_branch":
        preproc = {"flat_cut": {"nLeptons": {"cut": "0<=nLeptons<=2"}}}
    elif case == "not_root":
        (tmp_path / "fake.root").write_text("not a ROOT file at all")
        files = [files[0], tmp_path / "fake.root"]
    paths = write_workflow(tmp_path / "wf", files, labels=labels, params=params, preproc=preproc)
    if case == "malformed_params":
        (tmp_path / "wf" / "params.json").write_text('{"epochs": 3,')
    if case == "missing_labels":
        paths["labels"] = str(tmp_path / "wf" / "labelz.txt")
    with pytest.raises(BadInputError, match=message):
        check(paths)
    result = run_read(paths)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlaas4hep read: error: ")


def test_unreachable_xrootd_server_is_reported_quickly(sample_files, tmp_path):
    dead = f"root://127.0.0.1:{free_port()}//data/signal.root"
    paths = write_workflow(tmp_path / "wf", [sample_files["signal"], dead])
    result = run_read(paths)
    assert result.returncode == 2
    assert f"cannot open '{dead}'" in result.stderr and "Traceback" not in result.stderr


def test_missing_file_on_a_live_xrootd_server(xrootd, tmp_path, sample_files):
    paths = write_workflow(tmp_path / "wf", [sample_files["signal"], xrootd.proxy_url("no/such/file.root")])
    with pytest.raises(BadInputError, match=r"no/such/file\.root"):
        check(paths)


def test_read_command_prints_one_json_line(sample_files, tmp_path):
    paths = write_workflow(tmp_path / "wf", [sample_files["signal"], sample_files["background"]])
    result = run_read(paths)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"events", "features", "seconds", "events_per_s", "mb_per_s"} <= set(report)
    assert report["events"] == 8000
