"""Warm start through the service: ``init_model`` names one of the caller's published models; the job trains
it further on new files and publishes the next version of the same name.

The API checks the request before anything is queued (the model exists, is the caller's, and the new files'
branches are the ones it takes); the worker copies the bundle into the job's inputs, and the job, under its
own uid, starts from its weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from appliance.training.run import run_training
from tests.server.conftest import (
    TINY_MODEL,
    TINY_PARAMS,
    api_process,
    follow_job,
    http_getter,
    tar_gz,
    worker_process,
    workflow,
)
from tests.server.test_api import assert_error, submit
from tests.training.test_frameworks import TORCH_MODEL

pytestmark = pytest.mark.slow
ALICE = {"X-Forwarded-User": "alice"}
BOB = {"X-Forwarded-User": "bob"}
NARROW = {**TINY_PARAMS, "exclude_branches": ["MET_*"]}
WEAK = {**TINY_PARAMS, "nevts": 600}
FINISHED = ("succeeded", "failed", "cancelled")


def publish_first_model(tmp_path: Path, repository: Path, files: list[str], params: dict, name: str) -> None:
    """A real training run, published as version 1 into the service's repository."""
    directory = tmp_path / "first"
    directory.mkdir()
    (directory / "files.txt").write_text("".join(f"{url}\n" for url in files))
    (directory / "labels.txt").write_text("1\n0\n")
    (directory / "model.json").write_text(json.dumps(TINY_MODEL))
    run_training(
        files=directory / "files.txt",
        labels=directory / "labels.txt",
        model=directory / "model.json",
        params=params,
        fout=directory / "bundle",
        publish=repository,
        name=name,
    )


def test_bad_init_models_are_refused_before_anything_is_queued(make_app, data_dir, tmp_path, remote_samples):
    files = [remote_samples["signal"], remote_samples["background"]]
    publish_first_model(tmp_path, data_dir / "models", files, NARROW, "alice.narrow")
    client = make_app()

    missing = submit(client, workflow(remote_samples, init_model="nothing"))
    assert_error(missing, 404, "init_model 'nothing'", "no model 'alice.nothing' of yours")
    assert_error(
        submit(client, workflow(remote_samples, init_model="narrow/7")), 404, "no version 7", "(it has 1)"
    )
    assert_error(submit(client, workflow(remote_samples, init_model="narrow/x")), 400, "<name>[/<version>]")
    # Bob cannot start from Alice's model, and is not told whether it exists: the same answer as for none.
    for name in ("alice.narrow", "alice.absent"):
        theirs = submit(client, workflow(remote_samples, init_model=name), headers=BOB)
        assert_error(theirs, 404, f"init_model {name!r}: no model 'bob.{name}' of yours", "bob.<name>")
    # Alice's own model, with the new files' other branches: the culprits are named.
    other_spec = submit(client, workflow(remote_samples, init_model="narrow", name="narrow"))
    assert_error(other_spec, 400, "alice.narrow/1 has another feature spec", "MET_pt", "exclude_branches")
    other_transform = workflow(
        remote_samples, init_model="narrow", name="narrow", params={**NARROW, "normalisation": "standard"}
    )
    assert_error(submit(client, other_transform), 400, "normalisation 'standard' differs")
    renamed = workflow(remote_samples, init_model="alice.narrow", name="other", params=NARROW)
    assert_error(submit(client, renamed), 400, "next version of init_model's name")
    assert client.get("/jobs", headers=ALICE).get_json()["jobs"] == []
    assert client.get("/jobs", headers=BOB).get_json()["jobs"] == []

    accepted = submit(client, workflow(remote_samples, init_model="alice.narrow", name=None, params=NARROW))
    assert accepted.status_code == 201, accepted.get_data(as_text=True)
    assert accepted.get_json()["model_name"] == "alice.narrow"
    assert len(client.get("/jobs", headers=ALICE).get_json()["jobs"]) == 1


def test_a_job_starts_from_a_published_model_and_improves_it_on_new_data(
    data_dir, tmp_path, remote_samples, xrootd, sample_files
):
    twin = xrootd.proxy_url(xrootd.add_file(sample_files["background_twin"], "server/background_twin.root"))
    user = {"X-Forwarded-Email": "alice@example.org"}
    with api_process(data_dir, tmp_path / "api.log") as url, \
            worker_process(data_dir, tmp_path / "worker.log", *remote_samples.values()):  # fmt: skip
        get = http_getter(url, "alice@example.org")
        first = requests.post(
            f"{url}/jobs", json=workflow(remote_samples, params=WEAK), headers=user, timeout=60
        )
        assert first.status_code == 201, first.text
        done = follow_job(get, first.json()["id"], FINISHED, 600)
        assert done["state"] == "succeeded", done["error"]
        assert done["result"]["version"] == 1

        more = {**TINY_PARAMS, "epochs": 3}
        body = workflow(
            remote_samples, files=[remote_samples["signal"], twin], params=more, init_model="ttbar"
        )
        second = requests.post(f"{url}/jobs", json=body, headers=user, timeout=60)
        assert second.status_code == 201, second.text
        done = follow_job(get, second.json()["id"], FINISHED, 600)
        assert done["state"] == "succeeded", done["error"]
        name = done["model_name"]
        assert name == "alice-40example-2eorg.ttbar" and done["result"]["version"] == 2
        test = done["result"]["metrics"]
        assert test["auc"] > test["init_model_auc"] > 0.5  # old and new model on the same new test events
        logs = requests.get(f"{url}/jobs/{second.json()['id']}/logs", headers=user, timeout=30).text
        assert "--init-model" in logs and "/inputs/init_model" in logs

    published = data_dir / "models" / name / "2"
    metrics = json.loads((published / "metrics.json").read_text())
    assert metrics["init_model"] == {
        "name": name,
        "version": 1,
        "framework": "keras",
        "start_max_abs_diff": metrics["init_model"]["start_max_abs_diff"],
    }
    assert metrics["init_model"]["start_max_abs_diff"] < 1e-5
    assert (data_dir / "models" / name / "1" / "saved_model.pb").is_file()  # the old version stays


def test_a_pytorch_job_starts_from_the_state_dict_the_worker_published(
    data_dir, tmp_path, remote_samples, xrootd, sample_files
):
    """An ONNX bundle goes through the worker's check too, and its native/state_dict.pt is what the next job
    starts from (read by the job's uid from its own inputs)."""
    twin = xrootd.proxy_url(xrootd.add_file(sample_files["background_twin"], "server/background_twin.root"))
    options = {"training": {"loss": "bce_with_logits", "learning_rate": 0.002}}
    with api_process(data_dir, tmp_path / "api.log") as url, \
            worker_process(data_dir, tmp_path / "worker.log", *remote_samples.values()):  # fmt: skip
        get = http_getter(url, "alice")
        archive = tar_gz({"model.py": TORCH_MODEL.encode()})
        upload = requests.post(f"{url}/upload", data=archive, headers=ALICE, timeout=60)
        assert upload.status_code == 201, upload.text
        body = workflow(remote_samples, name="torchy", model="model.py", params={**WEAK, **options})
        first = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
        assert first.status_code == 201, first.text
        done = follow_job(get, first.json()["id"], FINISHED, 600)
        assert done["state"] == "succeeded", done["error"]
        assert done["result"]["version"] == 1

        more = {**TINY_PARAMS, "epochs": 3, **options}
        files = [remote_samples["signal"], twin]
        body = workflow(
            remote_samples, files=files, model="model.py", params=more, init_model="torchy", name=None
        )
        second = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
        assert second.status_code == 201, second.text
        done = follow_job(get, second.json()["id"], FINISHED, 600)
        assert done["state"] == "succeeded", done["error"]
        assert (done["model_name"], done["result"]["version"]) == ("alice.torchy", 2)
        test = done["result"]["metrics"]
        assert test["auc"] > max(test["init_model_auc"], 0.7)  # the weak first model may be below 0.5

    published = data_dir / "models" / "alice.torchy" / "2"
    assert (published / "model.onnx").is_file() and (published / "native" / "state_dict.pt").is_file()
    metrics = json.loads((published / "metrics.json").read_text())
    assert (
        metrics["init_model"]["framework"] == "torch" and metrics["init_model"]["start_max_abs_diff"] < 1e-4
    )


def test_the_worker_copies_only_regular_files_readable_by_the_job(tmp_path):
    from appliance.server.runner import copy_readable

    source = tmp_path / "models" / "alice.m" / "1"
    (source / "variables").mkdir(parents=True)
    (source / "params.json").write_text("{}")
    (source / "variables" / "variables.index").write_bytes(b"index")
    (source / "variables" / "variables.index").chmod(0o600)
    (source / "secret").symlink_to("/etc/shadow")
    (source / "outside").symlink_to(tmp_path, target_is_directory=True)
    target = tmp_path / "job" / "inputs" / "init_model"
    copy_readable(source, target)
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert found == ["params.json", "variables", "variables/variables.index"]
    assert (target / "variables" / "variables.index").stat().st_mode & 0o777 == 0o644
    assert (target / "variables").stat().st_mode & 0o777 == 0o755


def test_a_job_whose_init_model_was_deleted_before_it_started_fails_saying_so(make_app):
    from appliance.server.context import SERVER_NAME
    from appliance.server.jobdir import JobDir
    from appliance.server.runner import JobRun
    from appliance.server.store import FAILED, QUEUED, Job, now

    queue = make_app().application.extensions[SERVER_NAME]
    request = {"model_file": "model.json", "init_model": {"name": "alice.gone", "version": 3}}
    resources = {"memory_mb": 2048, "cpus": 1, "wall_time_s": 600, "device": "cpu"}
    job = Job(id="a" * 32, owner="alice", name="gone", model_name="alice.gone", state=QUEUED,
              resources=resources, created=now(), request=request)  # fmt: skip
    JobDir.of(queue.settings, job.id).inputs.mkdir(parents=True)
    state, error, result = JobRun(queue.settings, job, queue.store, "here:1", None).run()
    assert (state, result) == (FAILED, None)
    assert error == "init_model alice.gone/3 was deleted before the job started: submit it again"
    assert error in JobDir.of(queue.settings, job.id).log.read_text()
