"""mlaas4hep-client's server commands (submit, follow, jobs, cancel, download) against the MLaaS4HEP server
under gunicorn with token checks; the slow test trains a tiny model with a real worker."""

from __future__ import annotations

import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlaas4hep_client import cli as client
from tests.auth.cases import ALICE, AUDIENCE, BOB
from tests.auth.idp import IdentityProvider
from tests.auth.mlaas_server import data_directory, mlaas_api
from tests.server.conftest import TINY_MODEL, TINY_PARAMS, worker_process


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    with data_directory() as path:
        yield path


@pytest.fixture(scope="module")
def server(idp, data_dir) -> Iterator[str]:
    with mlaas_api(data_dir, idp, workers=1) as url:
        yield url


@pytest.fixture(scope="module")
def remote_background(xrootd, sample_files) -> str:
    return xrootd.proxy_url(xrootd.add_file(sample_files["background"], "client/background.root"))


def run_client(server: str, token: str | None, *argv: str) -> int:
    return client.main(["--server", server, *(["--token", token] if token else []), *argv])


def write_workflow(folder: Path, sample_files, remote_background: str, **overrides) -> Path:
    """A workflow naming local files: the model, the params, a list file with a local ROOT file and a URL."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(sample_files["signal"], folder / "data" / "signal.root")
    (folder / "model.json").write_text(json.dumps(TINY_MODEL))
    (folder / "params.json").write_text(json.dumps(TINY_PARAMS))
    (folder / "files.txt").write_text(f"# signal first\ndata/signal.root\n{remote_background}\n")
    body = {"name": "ttbar", "files": "files.txt", "labels": "1,0", "model": "model.json",
            "params": "params.json", **overrides}  # fmt: skip
    path = folder / "workflow.json"
    path.write_text(json.dumps(body))
    return path


def test_submit_uploads_the_local_files(server, idp, data_dir, tmp_path, sample_files, remote_background,
                                         capsys) -> None:  # fmt: skip
    workflow = write_workflow(tmp_path / "work", sample_files, remote_background)
    alice = idp.mint(ALICE, AUDIENCE)
    assert run_client(server, alice, "submit", str(workflow)) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "queued" and job["model_name"] == "alice.ttbar"
    inputs = data_dir / "jobs" / job["id"] / "inputs"
    uploaded = inputs / "upload" / "data" / "signal.root"
    assert uploaded.read_bytes() == sample_files["signal"].read_bytes()
    assert (inputs / "files.txt").read_text().split() == [str(uploaded), remote_background]
    assert json.loads((inputs / "params.json").read_text()) == TINY_PARAMS
    assert (inputs / "labels.txt").read_text().strip() == "1,0"  # not a local file: sent as it is

    # Bob does not see it; Alice's job list does.
    assert run_client(server, idp.mint(BOB, AUDIENCE), "follow", job["id"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert run_client(server, alice, "jobs") == 0
    assert job["id"] in capsys.readouterr().out


def test_follow_until_cancelled_then_no_download(server, idp, tmp_path, sample_files, remote_background,
                                                capsys) -> None:  # fmt: skip
    workflow = write_workflow(tmp_path / "work", sample_files, remote_background)
    alice = idp.mint(ALICE, AUDIENCE)
    assert run_client(server, alice, "submit", str(workflow), "--name", "short") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["model_name"] == "alice.short"
    outcome: list[int] = []
    follower = threading.Thread(
        target=lambda: outcome.append(run_client(server, alice, "follow", job["id"], "--interval", "0.2"))
    )
    follower.start()
    follower.join(1.0)
    assert follower.is_alive(), "follow returned while the job was still queued"
    assert run_client(server, alice, "cancel", job["id"]) == 0
    follower.join(30)
    assert outcome == [1]  # a job that did not succeed is a failure for scripts
    out = capsys.readouterr().out
    assert f"{job['id']} queued" in out and f"{job['id']} cancelled" in out
    assert run_client(server, alice, "download", job["id"], "-o", str(tmp_path / "out")) == 2
    assert "only a succeeded job" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_workflows_and_missing_tokens(server, idp, tmp_path, capsys) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    assert run_client(server, idp.mint(ALICE, AUDIENCE), "submit", str(tmp_path / "bad.json")) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "refused.json").write_text(json.dumps({"files": ["data/nothing.root"], "labels": [1],
                                                       "model": TINY_MODEL}))  # fmt: skip
    assert run_client(server, idp.mint(ALICE, AUDIENCE), "submit", str(tmp_path / "refused.json")) == 2
    assert "HTTP 400" in capsys.readouterr().err  # not a local file, not a URL: the server says so
    assert run_client(server, "garbage.garbage", "jobs") == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_prepare_workflow_keeps_urls_and_names_files_outside(tmp_path) -> None:
    outside = tmp_path / "elsewhere.root"
    outside.write_bytes(b"root")
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "model.py").write_text("def model(idim):\n    return None\n")
    path = tmp_path / "wf" / "workflow.json"
    body = {"files": [str(outside), "root://host//a.root", "store/b.root"], "labels": "is_signal",
            "model": "model.py", "params": {"epochs": 1}}  # fmt: skip
    path.write_text(json.dumps(body))
    prepared = client.prepare_workflow(path)
    assert prepared.body["files"] == ["external/0/elsewhere.root", "root://host//a.root", "store/b.root"]
    assert prepared.body["labels"] == "is_signal" and prepared.body["model"] == "model.py"
    assert prepared.archive == {
        "external/0/elsewhere.root": outside,
        "model.py": tmp_path / "wf" / "model.py",
    }


@pytest.mark.slow
def test_submit_follow_and_download_a_trained_model(server, idp, data_dir, tmp_path, sample_files,
                                                    remote_background, capsys) -> None:  # fmt: skip
    workflow = write_workflow(tmp_path / "work", sample_files, remote_background, name="trained")
    alice = idp.mint(ALICE, AUDIENCE)
    with worker_process(data_dir, tmp_path / "worker.log", remote_background):
        code = run_client(server, alice, "submit", str(workflow), "--follow", "--interval", "0.5")
        captured = capsys.readouterr()
        assert code == 0, captured.err + (tmp_path / "worker.log").read_text()[-3000:]
    job = json.loads(captured.out)
    assert f"{job['id']} succeeded" in captured.err
    out = tmp_path / "out"
    assert run_client(server, alice, "download", job["id"], "-o", str(out)) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == ["alice.trained.loss.png", "alice.trained.roc.png",
                                                     "alice.trained.tar.gz"]  # fmt: skip
    for plot in ("roc", "loss"):
        assert (out / f"alice.trained.{plot}.png").read_bytes().startswith(b"\x89PNG")
    with tarfile.open(out / "alice.trained.tar.gz") as bundle:
        names = bundle.getnames()
    assert any(name.endswith("saved_model.pb") for name in names)
    assert any(name.endswith("params.json") for name in names)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
