"""The HTTP API without a worker: validation, bad input answers, uploads, owner isolation, queued cancel."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from servicecore.naming import owner_namespace
from tests.server.conftest import TINY_MODEL, TINY_PARAMS, reachable, tar_gz, workflow

ALICE = {"X-Forwarded-User": "alice"}
BOB = {"X-Forwarded-Email": "bob@example.org"}


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == status
    for word in words:
        assert word in body["error"], body["error"]
    assert "Traceback" not in body["error"]
    return body


def submit(client, body, headers=ALICE, path="/jobs"):
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def test_hello_and_openapi(client):
    assert client.get("/hello").get_json()["status"] == "ok"
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    for path in (
        "/upload",
        "/submit",
        "/status",
        "/logs",
        "/model",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/logs",
        "/jobs/{job_id}/model",
        "/jobs/{job_id}/plots/{name}.png",
    ):
        assert path in document["paths"], path
    assert set(document["paths"]["/jobs/{job_id}"]) == {"get", "delete"}


def test_malformed_json_and_wrong_types(client):
    response = client.post("/jobs", data="{not json", content_type="application/json", headers=ALICE)
    assert_error(response, 400, "not valid JSON")
    assert_error(client.post("/jobs", data="[1, 2]", content_type="application/json"), 400, "JSON object")
    assert_error(client.post("/jobs", data="<x/>", content_type="application/xml"), 415, "content type")


def test_missing_and_unknown_fields(client, remote_samples):
    body = workflow(remote_samples)
    del body["model"]
    assert_error(submit(client, body), 400, "missing", "model")
    assert_error(submit(client, workflow(remote_samples, colour="red")), 400, "unknown field", "colour")
    prototype = workflow(remote_samples)
    del prototype["name"]
    assert_error(submit(client, prototype, path="/submit"), 400, "name")
    assert_error(submit(client, workflow(remote_samples, params={"epochz": 1})), 400, "unknown key", "epochz")
    assert_error(submit(client, workflow(remote_samples, labels=[1])), 400, "label(s) for 2 file(s)")


def test_files_that_reference_nothing_uploaded(client, remote_samples):
    nothing = "references nothing uploaded"
    assert_error(submit(client, workflow(remote_samples, files="files.txt")), 400, nothing)
    local = workflow(remote_samples, files=["data/signal.root", remote_samples["background"]])
    assert_error(submit(client, local), 400, "data/signal.root", "references nothing uploaded")
    upload = client.post("/upload", data=tar_gz({"files.txt": b"other.root\n"}), headers=ALICE)
    assert upload.status_code == 201
    for escape in ("../files.txt", "/etc/passwd"):
        assert_error(submit(client, workflow(remote_samples, files=escape)), 400, escape)
    assert_error(submit(client, workflow(remote_samples, files="files.txt")), 400, "other.root")
    # Bob has uploaded nothing: Alice's upload is not his.
    assert_error(submit(client, workflow(remote_samples, files="files.txt"), headers=BOB), 400, nothing)


def test_unreadable_root_urls_are_refused_at_submission(client, xrootd, remote_samples):
    missing = xrootd.proxy_url("server/does-not-exist.root")
    body = workflow(remote_samples, files=[remote_samples["signal"], missing])
    assert_error(submit(client, body), 400, "cannot read input", "does-not-exist.root")
    dead = workflow(remote_samples, files=[remote_samples["signal"], "root://127.0.0.1:1//x.root"])
    assert_error(submit(client, dead), 400, "cannot read input", "127.0.0.1:1")


def test_urls_jobs_cannot_reach_are_refused_at_submission(make_app, xrootd, remote_samples):
    client = make_app(job_network="isolated", job_network_allow=reachable(remote_samples["signal"]))
    assert submit(client, workflow(remote_samples)).status_code == 201  # through the proxy: allowed
    unreachable = "names a server that jobs cannot reach"
    origin = xrootd.origin_url("server/signal.root")
    for url in (origin, "root://eospublic.cern.ch//eos/opendata/x.root", "root://localhost:1//x.root"):
        body = workflow(remote_samples, files=[remote_samples["signal"], url])
        assert_error(submit(client, body), 400, unreachable, url)
    # "localhost" is the proxy's loopback address too.
    port = urlsplit(remote_samples["signal"]).port
    local = workflow(remote_samples, files=[f"root://localhost:{port}//server/signal.root"] * 2)
    assert submit(client, local).status_code == 201


def test_a_model_file_that_fails_to_import(client, remote_samples):
    archive = tar_gz({"model.py": b"def model(idim:\n    return None\n", "broken.json": b"{layers",
                      "model.txt": b"hello"})  # fmt: skip
    assert client.post("/upload", data=archive, headers=ALICE).status_code == 201
    assert_error(submit(client, workflow(remote_samples, model="model.py")), 400, "model.py", "failed")
    assert_error(submit(client, workflow(remote_samples, model="broken.json")), 400, "not valid JSON")
    assert_error(submit(client, workflow(remote_samples, model="model.txt")), 400, ".py", ".json")


def test_resource_requests_above_the_limits(make_app, remote_samples):
    client = make_app(
        max_memory_mb=2048, default_memory_mb=1024, max_cpus=2, max_wall_time_s=3600, default_wall_time_s=600
    )
    assert_error(submit(client, workflow(remote_samples, memory="3gb")), 400, "memory", "limit of 2048")
    assert_error(submit(client, workflow(remote_samples, cpus="4")), 400, "cpus", "limit of 2")
    assert_error(submit(client, workflow(remote_samples, wall_time="2h")), 400, "wall_time", "3600")
    assert_error(submit(client, workflow(remote_samples, memory="lots")), 400, "memory")
    assert_error(submit(client, workflow(remote_samples, device="gpu")), 400, "GPU")
    ok = submit(client, workflow(remote_samples, memory="1.5gb", cpus=2, wall_time="30m"))
    assert ok.status_code == 201, ok.get_data(as_text=True)
    assert ok.get_json()["resources"] == {
        "memory_mb": 1536,
        "cpus": 2,
        "wall_time_s": 1800,
        "device": "cpu",
        "workers": 1,
    }


def test_unknown_jobs_and_a_model_before_the_job_finished(client, remote_samples):
    assert_error(client.get("/jobs/0123456789abcdef0123456789abcdef", headers=ALICE), 404, "no job")
    assert_error(client.get("/jobs/../../etc", headers=ALICE), 404)
    assert_error(client.get("/status?job_id=nope", headers=ALICE), 404, "no job")
    assert_error(client.get("/status", headers=ALICE), 400, "job_id")
    job = submit(client, workflow(remote_samples)).get_json()
    assert job["state"] == "queued"
    assert_error(client.get(f"/jobs/{job['id']}/model", headers=ALICE), 409, "queued")
    assert_error(client.get(f"/model?job_id={job['id']}", headers=ALICE), 409)
    assert_error(client.get(f"/jobs/{job['id']}/plots/roc.png", headers=ALICE), 409)
    assert_error(client.get(f"/jobs/{job['id']}/plots/secret.png", headers=ALICE), 404, "no plot")


def test_owner_isolation(client, remote_samples, data_dir: Path):
    alice_job = submit(client, workflow(remote_samples)).get_json()
    bob_job = submit(client, workflow(remote_samples), headers=BOB).get_json()
    assert alice_job["model_name"] == "alice.ttbar"
    assert bob_job["model_name"] == f"{owner_namespace('bob@example.org')}.ttbar"
    assert [j["id"] for j in client.get("/jobs", headers=ALICE).get_json()["jobs"]] == [alice_job["id"]]
    for path in ("", "/logs", "/model", "/plots/roc.png"):
        assert_error(client.get(f"/jobs/{alice_job['id']}{path}", headers=BOB), 404, "no job")
    assert_error(client.get(f"/status?job_id={alice_job['id']}", headers=BOB), 404)
    assert_error(client.delete(f"/jobs/{alice_job['id']}", headers=BOB), 404)
    assert client.get(f"/jobs/{alice_job['id']}", headers=ALICE).get_json()["state"] == "queued"
    # A name cannot reach into another owner's namespace.
    sneaky = submit(client, workflow(remote_samples, name="../bob_example.ttbar")).get_json()
    assert sneaky["model_name"].startswith("alice.") and "/" not in sneaky["model_name"]


def test_owner_namespaces_never_collide():
    from servicecore.naming import model_name

    assert model_name("a.b", "c") != model_name("a", "b.c")
    assert owner_namespace("a.b") != owner_namespace("a_b") != owner_namespace("a-b")
    assert model_name("alice", "higgs") == "alice.higgs"


def test_prototype_upload_and_submit(client, data_dir: Path, sample_files):
    archive = tar_gz({
        "files_local.txt": b"data/signal.root\n# a comment\ndata/background.root\n",
        "labels_local.txt": b"1\n0\n",
        "ex_keras_model.json": json.dumps(TINY_MODEL).encode(),
        "params_local.json": json.dumps(TINY_PARAMS).encode(),
        "data/signal.root": sample_files["signal"].read_bytes(),
        "data/background.root": sample_files["background"].read_bytes(),
    })  # fmt: skip
    upload = client.post("/upload?name=luca", data=archive, headers=ALICE)
    assert upload.status_code == 201
    assert "data/signal.root" in upload.get_json()["files"]
    body = {
        "name": "luca",
        "device": "cpu",
        "memory": "3gb",
        "cpus": "2",
        "files": "files_local.txt",
        "labels": "labels_local.txt",
        "model": "ex_keras_model.json",
        "params": "params_local.json",
    }
    # The seed poster's curl -d sends form-encoded content; the JSON body is accepted as it is.
    response = client.post("/submit", data=json.dumps(body), headers=ALICE,
                           content_type="application/x-www-form-urlencoded")  # fmt: skip
    assert response.status_code == 201, response.get_data(as_text=True)
    job_id = response.get_json()["job_id"]
    assert response.get_json()["process_name"] == job_id
    status = client.get(f"/status?process_name={job_id}", headers=ALICE).get_json()
    assert status["state"] == "queued" and status["model_name"] == "alice.luca"
    inputs = data_dir / "jobs" / job_id / "inputs"
    listed = (inputs / "files.txt").read_text().split()
    assert listed == [str(inputs / "upload/data/signal.root"), str(inputs / "upload/data/background.root")]
    assert (inputs / "upload/data/signal.root").stat().st_mode & 0o004  # the job user reads it
    assert not list((data_dir / "jobs" / ".incoming").iterdir())


def test_unsafe_uploads_are_refused_and_leave_nothing(client, data_dir: Path):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    assert_error(client.post("/upload", data=buffer.getvalue(), headers=ALICE), 400, "..")
    assert_error(client.post("/upload", data=b"not a tar", headers=ALICE), 400, "tar")
    uploads = data_dir / "uploads" / "alice"
    assert not [p for p in uploads.rglob("*") if p.is_file()]
    assert not (data_dir / "escape.txt").exists()


def test_multipart_submission(client, remote_samples):
    data = {
        "files": "\n".join([remote_samples["signal"], remote_samples["background"]]),
        "labels": "1,0",
        "params": json.dumps(TINY_PARAMS),
        "name": "multi",
        "model": (__import__("io").BytesIO(json.dumps(TINY_MODEL).encode()), "my_model.json"),
    }
    response = client.post("/jobs", data=data, headers=ALICE, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    job = response.get_json()
    assert job["model_name"] == "alice.multi" and job["state"] == "queued"
    bad = {**data, "model": (__import__("io").BytesIO(b"def model(:"), "m.py")}
    assert_error(client.post("/jobs", data=bad, headers=ALICE, content_type="multipart/form-data"), 400,
                 "failed to load")  # fmt: skip


def test_cancel_a_queued_job(client, remote_samples):
    job = submit(client, workflow(remote_samples)).get_json()
    cancelled = client.delete(f"/jobs/{job['id']}", headers=ALICE)
    assert cancelled.status_code == 202
    assert cancelled.get_json()["state"] == "cancelled"
    # Once finished, DELETE deletes it (tests/server/test_housekeeping.py).
    assert client.delete(f"/jobs/{job['id']}", headers=ALICE).status_code == 200


@pytest.mark.parametrize("header", ["X-Forwarded-User", "X-Forwarded-Email"])
def test_local_user_without_a_header(make_app, remote_samples, header):
    client = make_app(local_user="physicist")
    job = submit(client, workflow(remote_samples), headers={}).get_json()
    assert job["model_name"] == "physicist.ttbar"
    assert client.get(f"/jobs/{job['id']}", headers={header: "someone"}).status_code == 404
    assert client.get(f"/jobs/{job['id']}").status_code == 200
