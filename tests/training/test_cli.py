"""``mlaas4hep train`` as users and the job worker run it: a subprocess reading through the XRootD proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.conftest import write_workflow

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def mlaas4hep(*args: object) -> list[str]:
    return [sys.executable, "-m", "appliance", *map(str, args)]


def train_args(workflow, fout: Path, *extra: object) -> list[str]:
    return mlaas4hep(
        "train",
        "--files",
        workflow.files,
        "--labels",
        workflow.labels,
        "--params",
        workflow.params,
        "--model",
        workflow.model,
        "--fout",
        fout,
        "--quiet",
        *extra,
    )


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_train_through_the_xrootd_proxy_publishes_a_bundle(tmp_path, xrootd, sample_files):
    urls = [
        xrootd.proxy_url(xrootd.add_file(sample_files[kind], f"cli/{kind}.root"))
        for kind in ("signal", "background")
    ]
    workflow = write_workflow(tmp_path / "wf", urls, [1, 0], params={"epochs": 2})
    progress = tmp_path / "progress.jsonl"
    done = subprocess.run(
        train_args(
            workflow,
            tmp_path / "out",
            "--publish",
            tmp_path / "models",
            "--name",
            "alice.ttbar",
            "--progress-file",
            progress,
        ),
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["bundle"] == str(tmp_path / "out")
    assert result["published"] == str(tmp_path / "models" / "alice.ttbar" / "1")
    assert result["version"] == 1 and result["name"] == "alice.ttbar"
    assert result["metrics"]["auc"] > 0.85
    params = json.loads((tmp_path / "models" / "alice.ttbar" / "1" / "params.json").read_text())
    assert [f["url"] for f in params["features"]["dataset"]["files"]] == urls
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [e["stage"] for e in events if e["stage"] != "train"] == [
        "specs",
        "specs",
        "evaluate",
        "publish",
        "done",
    ]
    assert [e["epoch"] for e in events if e["stage"] == "train" and not e.get("partial")] == [0, 1, 2]


def test_bad_input_exits_with_code_2_and_a_clear_message(tmp_path, sample_files):
    workflow = write_workflow(
        tmp_path / "wf",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        model="import keras\n",
        model_suffix=".py",
    )
    progress = tmp_path / "progress.jsonl"
    done = subprocess.run(
        train_args(workflow, tmp_path / "out", "--progress-file", progress),
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 2
    assert "defines no function model(idim)" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    failed = json.loads(progress.read_text().splitlines()[-1])
    assert failed["stage"] == "failed" and "model(idim)" in failed["error"]
    assert not (tmp_path / "out").exists()


def test_a_terminated_training_cleans_up_and_publishes_nothing(tmp_path, sample_files):
    workflow = write_workflow(
        tmp_path / "wf", [sample_files["signal"], sample_files["background"]], [1, 0], params={"epochs": 1000}
    )
    progress = tmp_path / "progress.jsonl"
    proc = subprocess.Popen(
        train_args(
            workflow, tmp_path / "out" / "m", "--publish", tmp_path / "models", "--progress-file", progress
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists() and '"epoch": 2' in progress.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert list((tmp_path / "out").iterdir()) == []  # no bundle, no hold-out cache, no staging directory
    assert not (tmp_path / "models").exists()
