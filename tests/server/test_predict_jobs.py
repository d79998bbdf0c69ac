"""Predict jobs through the API: submit-time checks answered 4xx, then the real API, worker and XRootD proxy
applying a user's model to two files, friend trees downloaded or written through the proxy, scores equal to
TFaaS's predictor to 1e-5, and a job that fails on a file without the model's branches leaving nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import requests
import uproot

from servicecore.safetar import extract_archive
from tests.inference.conftest import Trained, trained  # noqa: F401 - the session fixture, shared
from tests.inference.test_predict import check_friends
from tests.server.conftest import api_process, follow_job, http_getter, tar_gz, worker_process
from tests.server.test_api import ALICE, BOB, assert_error, submit
from tests.ui.test_browser import CHROMEDRIVER, CHROMIUM, browser, screenshot_dir  # noqa: F401 - fixture

FINAL = ("succeeded", "failed", "cancelled")


def publish_for_alice(model: Trained, data_dir: Path, version: int = 1) -> str:
    """The trained bundle in the server's model repository as alice's ``ttbar`` (version ``version``)."""
    target = data_dir / "models" / "alice.ttbar" / str(version)
    if not target.exists():
        shutil.copytree(model.bundle, target)
        params = json.loads((target / "params.json").read_text())
        (target / "params.json").write_text(json.dumps({**params, "version": version}))
    return "alice.ttbar"


def lacking_file(path: Path) -> Path:
    with uproot.recreate(path) as out:
        out["Events"] = {"MET_pt": np.full(50, 30.0), "Jet_pt": ak.Array([[40.0]] * 50)}
    return path


def test_predict_submissions_are_checked(make_app, data_dir, trained, tmp_path):  # noqa: F811
    client = make_app(check_urls="false")
    publish_for_alice(trained, data_dir, 1)
    publish_for_alice(trained, data_dir, 2)
    signal = trained.inputs["ttree"]["signal"]
    upload = tar_gz(
        {"signal.root": signal.read_bytes(), "lacking.root": lacking_file(tmp_path / "l.root").read_bytes()}
    )
    assert client.post("/upload", data=upload, headers=ALICE).status_code == 201
    body = {"kind": "predict", "model": "ttbar", "files": ["signal.root"]}

    assert_error(submit(client, {**body, "model": "nothing"}), 404, "no model 'nothing' of yours")
    # Bob can neither name alice's model in full nor reach it by its short name.
    assert_error(submit(client, {**body, "model": "alice.ttbar"}, headers=BOB), 404, "of yours")
    assert_error(submit(client, {**body, "model": "ttbar/7"}), 404, "'ttbar/7'")
    assert_error(submit(client, {**body, "model": "ttbar/x"}), 400, "positive integer")
    assert_error(submit(client, {**body, "files": []}), 400, "missing", "files")
    assert_error(submit(client, {**body, "labels": [1]}), 400, "predict job takes no labels")
    assert_error(submit(client, {**body, "kind": "score"}), 400, "kind must be one of train, predict")
    assert_error(submit(client, {**body, "fout": "/tmp/out"}), 400, "fout must be a root://")
    assert_error(submit(client, {**body, "files": ["elsewhere.root"]}), 400, "references nothing uploaded")
    missing = assert_error(
        submit(client, {**body, "files": ["signal.root", "lacking.root"]}), 400, "lacking.root"
    )
    assert "MET_sumEt" in missing["error"] and "signal.root" not in missing["error"].split("needs")[1]
    training = {"files": ["signal.root"], "labels": [1], "model": {"layers": []}, "fout": "root://x//y"}
    assert_error(submit(client, training), 400, "a training takes none")

    created = submit(client, body)
    assert created.status_code == 201, created.get_data(as_text=True)
    job = created.get_json()
    assert (job["kind"], job["model_name"], job["state"]) == ("predict", "alice.ttbar", "queued")
    pinned = submit(client, {**body, "model": "alice.ttbar/1"}).get_json()
    listed = {j["id"]: j for j in client.get("/jobs", headers=ALICE).get_json()["jobs"]}
    assert listed[pinned["id"]]["kind"] == "predict"
    # The job directory holds the files list only: the worker stages the bundle when the job starts.
    inputs = data_dir / "jobs" / job["id"] / "inputs"
    assert not (inputs / "bundle").exists()
    assert (inputs / "files.txt").read_text().strip().endswith("upload/signal.root")
    from appliance.server.store import JobStore

    store = JobStore(data_dir / "jobs.db")
    assert store.get(job["id"]).request == {
        "kind": "predict",
        "model": "alice.ttbar",
        "version": 2,
        "fout": None,
    }
    assert store.get(pinned["id"]).request["version"] == 1
    assert_error(client.get(f"/jobs/{job['id']}/friends", headers=ALICE), 409, "queued")


def test_remote_inputs_and_fout_are_checked(make_app, data_dir, trained, xrootd, tmp_path):  # noqa: F811
    client = make_app()  # check_urls on, as deployed
    publish_for_alice(trained, data_dir)
    good = xrootd.proxy_url(xrootd.add_file(trained.inputs["rntuple"]["signal"], "predictcheck/signal.root"))
    lacking = xrootd.proxy_url(
        xrootd.add_file(lacking_file(tmp_path / "lacking.root"), "predictcheck/lacking.root")
    )
    body = {"kind": "predict", "model": "ttbar", "files": [good, lacking]}
    refused = assert_error(submit(client, body), 400, "lacking.root", "MET_sumEt")
    assert "signal.root" not in refused["error"]
    assert_error(
        submit(client, {**body, "files": [good.replace("signal", "nothing")]}), 400, "cannot read input"
    )
    taken = xrootd.data_dir / "predictcheck-out"
    taken.mkdir()
    (taken / "signal_scores.root").write_bytes(b"an earlier run")
    destination = xrootd.proxy_url("predictcheck-out")
    assert_error(
        submit(client, {**body, "files": [good], "fout": destination}),
        400,
        "already holds signal_scores.root",
    )
    assert submit(client, {**body, "files": [good]}).status_code == 201


@pytest.mark.slow
def test_predict_jobs_through_the_api_worker_and_xrootd_proxy(data_dir, tmp_path, trained, xrootd):  # noqa: F811
    publish_for_alice(trained, data_dir)
    urls = [
        xrootd.proxy_url(xrootd.add_file(trained.inputs["ttree"][n], f"predictjobs/{n}.root"))
        for n in ("signal", "background")
    ]
    lacking = xrootd.proxy_url(
        xrootd.add_file(lacking_file(tmp_path / "lacking.root"), "predictjobs/lacking.root")
    )
    outputs = xrootd.data_dir / "predictjobs-out"
    outputs.mkdir()
    outputs.chmod(0o777)  # the xrootd user writes there
    # No URL check at submission: the file without the model's branches reaches the job, which must fail.
    with api_process(data_dir, tmp_path / "api.log", check_urls="false") as url, \
            worker_process(data_dir, tmp_path / "worker.log", *urls):  # fmt: skip
        get = http_getter(url, "alice")

        def post(body: dict) -> dict:
            answer = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
            assert answer.status_code == 201, answer.text
            return answer.json()

        download = post({"kind": "predict", "model": "ttbar", "files": urls, "cpus": 2})
        through = post(
            {
                "kind": "predict",
                "model": "ttbar/1",
                "files": urls,
                "fout": xrootd.proxy_url("predictjobs-out/run1"),
            }
        )
        broken = post(
            {
                "kind": "predict",
                "model": "ttbar",
                "files": [urls[0], lacking],
                "fout": xrootd.proxy_url("predictjobs-out/run2"),
            }
        )

        done = follow_job(get, download["id"], FINAL, 600)
        assert done["state"] == "succeeded", (done["error"], (tmp_path / "worker.log").read_text()[-3000:])
        assert done["kind"] == "predict" and done["progress"]["stage"] == "done"
        assert done["result"]["events"] == 8000 and done["result"]["output"] == "download"
        assert [f["entries"] for f in done["result"]["files"]] == [3000, 5000]
        assert done["links"]["friends"] == f"/jobs/{download['id']}/friends"
        archive = requests.get(f"{url}/jobs/{download['id']}/friends", headers=ALICE, timeout=60)
        assert archive.status_code == 200
        extract_archive(archive.content, tmp_path / "download")
        friends = tmp_path / "download" / "friends"
        summary = json.loads((friends / "predict.json").read_text())
        check_friends(trained, "ttree", friends, summary)
        assert (
            requests.get(f"{url}/jobs/{download['id']}/model", headers=ALICE, timeout=30).status_code == 404
        )
        log = requests.get(f"{url}/jobs/{download['id']}/logs", headers=ALICE, timeout=30).text
        assert "predict exited with code 0" in log and "friend trees checked and archived" in log

        done = follow_job(get, through["id"], FINAL, 600)
        assert done["state"] == "succeeded", done["error"]
        assert done["result"]["output"].endswith("predictjobs-out/run1") and done["result"]["events"] == 8000
        assert "friends" not in done["links"]
        check_friends(
            trained, "ttree", outputs / "run1", json.loads((outputs / "run1" / "predict.json").read_text())
        )

        failed = follow_job(get, broken["id"], FINAL, 600)
        assert failed["state"] == "failed"
        assert "bad input" in failed["error"] and "lacking.root" in failed["error"], failed["error"]
        assert "MET_sumEt" in failed["error"]
        assert not (outputs / "run2").exists() or not any((outputs / "run2").iterdir())
        assert not (data_dir / "jobs" / broken["id"] / "friends").exists()


@pytest.mark.slow
def test_the_client_submits_a_predict_job_and_downloads_its_friend_trees(trained, xrootd, tmp_path, capsys):  # noqa: F811
    from mlaas4hep_client import cli as client
    from tests.auth.cases import ALICE as ALICE_USER
    from tests.auth.cases import AUDIENCE
    from tests.auth.idp import IdentityProvider
    from tests.auth.mlaas_server import data_directory, mlaas_api

    remote = xrootd.proxy_url(
        xrootd.add_file(trained.inputs["rntuple"]["background"], "predictclient/background.root")
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(trained.inputs["ttree"]["signal"], work / "signal.root")
    (work / "files.txt").write_text(f"signal.root\n{remote}\n")
    (work / "ttbar").write_text("a local file named like the model is not uploaded for a predict job")
    (work / "predict.json").write_text(json.dumps({"model": "ttbar", "files": "files.txt"}))
    with IdentityProvider.running() as idp, data_directory() as data_dir, \
            mlaas_api(data_dir, idp, workers=1) as url, \
            worker_process(data_dir, tmp_path / "worker.log", remote):  # fmt: skip
        publish_for_alice(trained, data_dir)
        token = idp.mint(ALICE_USER, AUDIENCE)
        argv = ["--server", url, "--token", token]
        code = client.main(
            [
                *argv,
                "submit",
                "--kind",
                "predict",
                str(work / "predict.json"),
                "--follow",
                "--interval",
                "0.5",
            ]
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err + (tmp_path / "worker.log").read_text()[-3000:]
        job = json.loads(captured.out)
        assert job["kind"] == "predict" and f"{job['id']} succeeded" in captured.err
        assert client.main([*argv, "download", job["id"], "-o", str(tmp_path / "out")]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.name == f"{job['id']}-friends.tar.gz"
    extract_archive(written.read_bytes(), tmp_path / "friends")
    with uproot.open(tmp_path / "friends" / "friends" / "background_scores.root") as handle:
        assert handle["scores"].num_entries == 5000
    with uproot.open(tmp_path / "friends" / "friends" / "signal_scores.root") as handle:
        assert handle["scores"].num_entries == 3000


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs chromium and its driver")
def test_the_page_shows_a_predict_job_and_its_friend_trees(browser, trained, xrootd, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.auth.cases import ALICE as ALICE_USER
    from tests.auth.cases import AUDIENCE
    from tests.auth.idp import IdentityProvider
    from tests.auth.mlaas_server import data_directory, mlaas_api

    remote = xrootd.proxy_url(xrootd.add_file(trained.inputs["ttree"]["signal"], "predictpage/signal.root"))
    with IdentityProvider.running() as idp, data_directory() as data_dir, \
            mlaas_api(data_dir, idp, workers=1) as url, \
            worker_process(data_dir, tmp_path / "worker.log", remote):  # fmt: skip
        publish_for_alice(trained, data_dir)
        token = idp.mint(ALICE_USER, AUDIENCE)
        headers = {"Authorization": f"Bearer {token}"}
        body = {"kind": "predict", "model": "ttbar", "files": [remote]}
        job = requests.post(f"{url}/jobs", json=body, headers=headers, timeout=60).json()

        browser.get(f"{url}/ui/#token={token}")
        wait = WebDriverWait(browser, 30)
        row = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-job="{job["id"]}"]')))
        assert row.find_element(By.CSS_SELECTOR, "td.kind").text == "predict"
        assert [th.text.lower() for th in browser.find_elements(By.CSS_SELECTOR, "#jobs th")][:3] == [
            "job",
            "kind",
            "model",
        ]
        row.find_element(By.CSS_SELECTOR, "button.open").click()
        try:
            WebDriverWait(browser, 300, poll_frequency=1).until(
                seen.text_to_be_present_in_element((By.ID, "detail-state"), "succeeded")
            )
        except Exception:
            pytest.fail(
                f"the page never showed the job succeeded:\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
            )
        download = wait.until(seen.visibility_of_element_located((By.ID, "download-model")))
        assert download.text == "Download friend trees (.tar.gz)"
        facts = browser.find_element(By.ID, "detail-facts").text
        assert "predict" in facts and "3000 (" in facts and "download" in facts, facts
        assert not browser.find_element(By.ID, "plots").is_displayed()  # a predict job makes no plots
        folder = screenshot_dir(tmp_path)
        browser.save_screenshot(str(folder / "mlaas4hep-predict-job.png"))
        print(f"screenshot: {folder / 'mlaas4hep-predict-job.png'}")
