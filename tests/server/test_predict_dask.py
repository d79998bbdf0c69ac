"""Predict jobs on the appliance's Dask scheduler (setting ``dask_scheduler``): a real ``dask scheduler`` and
``dask worker`` as processes, the real API and job worker (the job in its own network namespace when the
tests run as root), files through the XRootD proxy; scores equal to a local cluster's, and an unreachable
scheduler fails the job with a clear message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import uproot

from appliance.inference.predict import PredictOptions, run_predict
from appliance.server.network import Endpoint, scheduler_endpoints
from appliance.server.settings import Settings
from servicecore.errors import BadInputError
from servicecore.safetar import extract_archive
from tests.inference.conftest import trained  # noqa: F401 - the session fixture, shared
from tests.server.conftest import api_process, follow_job, http_getter, tar_gz, worker_process
from tests.server.test_api import ALICE, assert_error, submit
from tests.server.test_predict_jobs import FINAL, publish_for_alice
from tests.support.dask_cluster import dask_cluster


def test_the_scheduler_setting_is_an_ip_address_and_port(tmp_path):
    assert Settings(data_dir=tmp_path).dask_scheduler == ""
    assert scheduler_endpoints("") == []
    assert scheduler_endpoints("tcp://10.0.0.5:8786") == [Endpoint("10.0.0.5", 8786)]
    assert Settings(data_dir=tmp_path, dask_scheduler="tcp://[::1]:8786").dask_scheduler == "tcp://[::1]:8786"
    for bad, message in [
        ("10.0.0.5:8786", "is not tcp://ADDRESS:PORT"),
        ("tls://10.0.0.5:8786", "is not tcp://ADDRESS:PORT"),
        ("tcp://10.0.0.5", "is not ADDRESS:PORT"),
        ("tcp://sched.example:8786", "is not an IP address"),
        ("tcp://10.0.0.5:8786,10.0.0.6:8786", "is not tcp://ADDRESS:PORT"),
    ]:
        with pytest.raises(BadInputError, match=f"setting dask_scheduler: .*{message}"):
            Settings(data_dir=tmp_path, dask_scheduler=bad)


def test_uploaded_files_are_refused_when_jobs_run_on_a_scheduler(make_app, data_dir, trained, xrootd):  # noqa: F811
    client = make_app(check_urls="false", dask_scheduler="tcp://127.0.0.1:8786")
    publish_for_alice(trained, data_dir)
    upload = tar_gz({"signal.root": trained.inputs["ttree"]["signal"].read_bytes()})
    assert client.post("/upload", data=upload, headers=ALICE).status_code == 201
    remote = xrootd.proxy_url(xrootd.add_file(trained.inputs["ttree"]["signal"], "predictdask/up.root"))
    body = {"kind": "predict", "model": "ttbar", "files": [remote, "signal.root"]}
    refused = assert_error(submit(client, body), 400, "Dask scheduler", "root://", "'signal.root'")
    assert remote not in refused["error"]
    assert submit(client, {**body, "files": [remote]}).status_code == 201


@pytest.mark.slow
def test_predict_jobs_run_on_the_appliances_dask_scheduler(data_dir, tmp_path, trained, xrootd):  # noqa: F811
    from mlaas4hep_devtools.processes import free_port

    publish_for_alice(trained, data_dir)
    urls = [
        xrootd.proxy_url(xrootd.add_file(trained.inputs["ttree"][n], f"predictdask/{n}.root"))
        for n in ("signal", "background")
    ]
    local = run_predict(urls, trained.bundle, tmp_path / "local", PredictOptions(task_entries=1100))
    body = {"kind": "predict", "model": "ttbar", "files": urls, "cpus": 1}
    with (
        dask_cluster(tmp_path / "dask") as cluster,
        api_process(data_dir, tmp_path / "api.log", check_urls="false") as url,
        worker_process(data_dir, tmp_path / "worker.log", *urls, dask_scheduler=cluster.address),
    ):
        answer = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        done = follow_job(http_getter(url, "alice"), job_id, FINAL, 600)
        assert done["state"] == "succeeded", (done["error"], (tmp_path / "worker.log").read_text()[-3000:])
        engine = {"scheduler": cluster.address, "bundle": "shipped", "workers": 1, "threads": 2}
        assert done["result"]["engine"] == engine
        assert [f["entries"] for f in done["result"]["files"]] == [3000, 5000]
        archive = requests.get(f"{url}/jobs/{job_id}/friends", headers=ALICE, timeout=60)
        assert archive.status_code == 200
        extract_archive(archive.content, tmp_path / "download")
        # The Dask worker loaded the model from its own unpacked copy, not from the job's inputs/bundle.
        unpacked = cluster.unpacked_bundles()
        assert len(unpacked) == 1 and "inputs" not in unpacked[0]
    friends = tmp_path / "download" / "friends"
    assert json.loads((friends / "predict.json").read_text())["engine"] == engine
    for name, entries in (("signal", 3000), ("background", 5000)):
        remote = uproot.open(friends / f"{name}_scores.root")["scores"].arrays(library="np")
        there = uproot.open(tmp_path / "local" / f"{name}_scores.root")["scores"].arrays(library="np")
        assert len(remote["entry"]) == len(there["entry"]) == entries
        np.testing.assert_array_equal(remote["passed"], there["passed"])
        np.testing.assert_allclose(remote["score_1"], there["score_1"], rtol=1e-5, atol=1e-6)
    assert local["engine"]["scheduler"] == "local"

    # A scheduler that nobody runs: the job fails, naming it, and leaves no friend tree.
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with (
        api_process(data_dir, tmp_path / "api2.log", check_urls="false") as url,
        worker_process(data_dir, tmp_path / "worker2.log", *urls, dask_scheduler=nowhere),
    ):
        answer = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
        assert answer.status_code == 201, answer.text
        failed = follow_job(http_getter(url, "alice"), answer.json()["id"], FINAL, 600)
    assert failed["state"] == "failed"
    assert f"cannot reach the Dask scheduler '{nowhere}'" in failed["error"], failed["error"]
    assert not (data_dir / "jobs" / answer.json()["id"] / "friends").exists()
