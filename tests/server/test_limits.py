"""API hardening (issue #14), against the API under gunicorn: log offsets, bounded log followers, the JSON
body limit (chunked bodies included), deep JSON, per-user disk quotas and tar bombs."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.server.conftest import api_process, tar_gz, workflow

ALICE = {"X-Forwarded-User": "alice"}
HUGE_OFFSET = 2305843009213693953


def submit(url: str, body: dict, headers: dict = ALICE) -> dict:
    response = requests.post(f"{url}/jobs", json=body, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def call(method: str, url: str, user: str = "alice", headers: dict | None = None, **arguments):
    """One request as ``user``, identified as oauth2-proxy would."""
    arguments.setdefault("timeout", 60)
    return requests.request(method, url, headers={"X-Forwarded-User": user, **(headers or {})}, **arguments)


def upload(url: str, files: dict[str, bytes], user: str = "alice") -> requests.Response:
    return call("POST", f"{url}/upload", user, data=tar_gz(files))


def assert_error(response: requests.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert body["status"] == status
    for word in words:
        assert word in body["error"], body["error"]


def test_log_offsets_are_range_checked(data_dir, tmp_path, remote_samples):
    with api_process(data_dir, tmp_path / "api.log") as url:
        job = submit(url, workflow(remote_samples))
        for follow in ("", "&follow=true"):
            response = call("GET", f"{url}/jobs/{job['id']}/logs?offset={HUGE_OFFSET}{follow}")
            assert_error(response, 400, "offset")
        assert_error(requests.get(f"{url}/logs?job_id={job['id']}&offset=-1", headers=ALICE, timeout=30), 400)
        plain = requests.get(f"{url}/jobs/{job['id']}/logs?offset=0", headers=ALICE, timeout=30)
        assert plain.status_code == 200 and plain.headers["X-Log-Offset"] == "0"


def test_log_followers_are_bounded_and_health_stays_quick(data_dir, tmp_path, remote_samples):
    settings = {"threads": 8, "max_followers": 6, "max_followers_per_user": 4, "follow_default_s": 30}
    with api_process(data_dir, tmp_path / "api.log", **settings) as url, contextlib.ExitStack() as streams:
        users = [f"user{n}" for n in range(12)]
        jobs = {
            user: submit(url, workflow(remote_samples), {"X-Forwarded-User": user})["id"] for user in users
        }
        jobs["alice"] = submit(url, workflow(remote_samples))["id"]

        def follow(user: str) -> requests.Response:
            response = call(
                "GET", f"{url}/jobs/{jobs[user]}/logs?follow=true", user, stream=True, timeout=(5, 60)
            )
            streams.callback(response.close)
            return response

        alice = [follow("alice") for _ in range(5)]
        assert [r.status_code for r in alice] == [200, 200, 200, 200, 429]
        assert "4 logs" in alice[-1].json()["error"]
        with ThreadPoolExecutor(12) as pool:
            others = list(pool.map(follow, users))
        codes = sorted(r.status_code for r in others)
        assert codes == [200, 200] + [429] * 10, codes  # 6 open in all: Alice's 4 and two more
        assert all("followers are open" in r.json()["error"] for r in others if r.status_code == 429)
        # 16 followers asked, 6 hold threads: the API still answers at once.
        started = time.monotonic()
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        # A closed stream gives its place back.
        alice[0].close()
        time.sleep(2)  # the server looks for hung-up followers every half second
        again = [follow("alice") for _ in range(2)]
        assert sorted(r.status_code for r in again) == [200, 429]


def test_a_follow_ends_after_the_default_time(data_dir, tmp_path, remote_samples):
    with api_process(data_dir, tmp_path / "api.log", follow_default_s=2, follow_max_s=5) as url:
        job = submit(url, workflow(remote_samples))
        started = time.monotonic()
        followed = requests.get(f"{url}/jobs/{job['id']}/logs?follow=true", headers=ALICE, timeout=30)
        assert followed.status_code == 200 and 1.5 < time.monotonic() - started < 10
        asked = requests.get(f"{url}/jobs/{job['id']}/logs?follow=true&follow_s=6", headers=ALICE, timeout=30)
        assert_error(asked, 400, "follow_s", "between 1 and 5")


def test_json_bodies_have_their_own_limit_chunked_or_not(data_dir, tmp_path, remote_samples):
    with api_process(data_dir, tmp_path / "api.log", max_json_bytes=300_000) as url:
        big = workflow(remote_samples, name="x" * 310_000)
        response = requests.post(f"{url}/jobs", json=big, headers=ALICE, timeout=30)
        assert_error(response, 413, "300000")
        text = requests.models.complexjson.dumps(big).encode()

        def chunks():
            for start in range(0, len(text), 4096):
                yield text[start : start + 4096]

        as_json = {"Content-Type": "application/json"}
        chunked = call("POST", f"{url}/jobs", data=chunks(), headers=as_json)
        assert_error(chunked, 413)
        deep = "[" * 100_000 + "]" * 100_000
        nested = call("POST", f"{url}/submit", data=deep, headers=as_json)
        assert_error(nested, 400, "not valid JSON")
        # Uploads keep their own, larger limit.
        uploaded = upload(url, {"big.bin": os.urandom(200_000)})
        assert uploaded.status_code == 201, uploaded.text
        assert submit(url, workflow(remote_samples))["state"] == "queued"


def test_the_disk_quota_is_stated_and_enforced(data_dir, tmp_path, remote_samples):
    with api_process(data_dir, tmp_path / "api.log", disk_quota_bytes=300_000) as url:
        first = upload(url, {"a.bin": os.urandom(200_000)})
        assert first.status_code == 201, first.text
        disk = first.json()["disk"]
        assert disk["quota_bytes"] == 300_000 and 200_000 <= disk["used_bytes"] < 201_000, disk
        job = submit(url, workflow(remote_samples))
        assert job["disk"]["quota_bytes"] == 300_000 and job["disk"]["used_bytes"] >= 200_000
        second = upload(url, {"b.bin": os.urandom(150_000)})
        assert_error(second, 507, "quota")
        # Bob's quota is his own.
        bob = upload(url, {"b.bin": os.urandom(150_000)}, user="bob")
        assert bob.status_code == 201
    with api_process(data_dir, tmp_path / "api2.log", disk_quota_bytes=100_000) as url:
        assert_error(call("POST", f"{url}/jobs", json=workflow(remote_samples)), 507, "quota")
        assert_error(upload(url, {"c.txt": b"x"}), 507, "quota")
    assert not [p for p in (data_dir / "uploads").rglob("b.bin") if "alice" in str(p)]


@pytest.mark.parametrize("bomb", ["members", "expansion", "ratio"])
def test_tar_bombs_are_refused_and_leave_nothing(data_dir, tmp_path, bomb):
    settings = {"max_upload_members": 50, "max_upload_bytes": 10 << 20}
    if bomb == "members":
        archive = tar_gz({f"f{n}.txt": b"x" for n in range(51)})
        words = ("more than 50 members",)
    elif bomb == "ratio":
        # Zeros in 1 MiB members, each and all of them within the byte limit: the expansion gives it away.
        settings["max_upload_bytes"] = 64 << 20
        archive = tar_gz({f"zeros{n}.bin": bytes(1 << 20) for n in range(48)})
        words = ("compression bomb",)
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo("zeros.bin")
            info.size = 64 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
        archive = buffer.getvalue()
        assert len(archive) < 1 << 20  # a small body that expands 64-fold beyond the limit
        words = ("unpacks to more than",)
    with api_process(data_dir, tmp_path / "api.log", **settings) as url:
        response = requests.post(f"{url}/upload", data=archive, headers=ALICE, timeout=60)
        assert_error(response, 400, *words)
    assert not [p for p in (data_dir / "uploads").rglob("*") if p.is_file()]
