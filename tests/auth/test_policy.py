"""The access policy and the start-up refusals against the real services.

A service refuses, before it listens, a demo mode on a non-loopback bind and oidc settings that would let
every user of the issuers in; with oidc, ``owner_sub`` alone admits only the launching user, and
``allow_any_user`` admits everyone the issuer vouches for, who still changes only their own models.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.auth.cases import ALICE, AUDIENCE, BOB, EVE, GROUP
from tests.auth.idp import IdentityProvider
from tests.auth.mlaas_server import data_directory, mlaas_api
from tests.server.conftest import REPO, server_env
from tests.support.processes import free_port, stop


def oidc(idp: IdentityProvider, **policy: object) -> dict:
    return {"mode": "oidc", "issuers": [idp.issuer], "audiences": [AUDIENCE], **policy}


def start_refused(argv: list[str], env: dict[str, str], port: int) -> str:
    """Run a service that must exit with status 2 before anything listens on ``port``; its output."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        cwd=REPO,
        start_new_session=True,
    )
    listened = False
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the service neither refused to start nor stopped"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                listened = True
            time.sleep(0.05)
    finally:
        stop(proc)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 2 and not listened, (proc.returncode, listened, output[-2000:])
    assert "Traceback" not in output, output[-2000:]
    return output


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


def serve_argv(data_dir: Path, port: int, bind: str) -> list[str]:
    return [sys.executable, "-m", "appliance", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--bind", bind]  # fmt: skip


def tfaas_argv(model_dir: Path, port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "tfaas", "--model-dir", str(model_dir), "--port", str(port), "--host", host]


# (auth settings, bind address, the words the refusal must say)
REFUSALS = {
    "local-demo beyond loopback": ({"mode": "local-demo"}, "0.0.0.0", ["auth.mode", "demo mode", "0.0.0.0"]),
    "header demo beyond loopback": ({"mode": "trusted-header-demo"}, "0.0.0.0", ["auth.mode", "demo mode"]),
    "unset beyond loopback is oidc": (None, "0.0.0.0", ["auth.issuers", "not a loopback address"]),
    "oidc open to every user": (
        "open",
        "127.0.0.1",
        ["auth.owner_sub / auth.allowed_groups", "allow_any_user"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_api_refuses_to_start(idp, tmp_path, case) -> None:
    auth, bind, words = REFUSALS[case]
    port = free_port()
    env = server_env(tmp_path)
    if auth is not None:
        env["MLAAS4HEP_AUTH"] = json.dumps(oidc(idp) if auth == "open" else auth)
    output = start_refused(serve_argv(tmp_path, port, bind), env, port)
    for word in words:
        assert word in output, output


@pytest.mark.parametrize("case", list(REFUSALS))
def test_tfaas_refuses_to_start(idp, tmp_path, case) -> None:
    auth, bind, words = REFUSALS[case]
    port = free_port()
    env = {} if auth is None else {"TFAAS_AUTH": json.dumps(oidc(idp) if auth == "open" else auth)}
    output = start_refused(tfaas_argv(tmp_path / "models", port, bind), env, port)
    assert "tfaas:" in output
    for word in words:
        assert word in output, output


def test_owner_sub_alone_admits_only_the_launching_user(idp) -> None:
    with (
        data_directory() as data_dir,
        mlaas_api(data_dir, idp, workers=1, auth=oidc(idp, owner_sub=ALICE.sub)) as url,
    ):

        def jobs(user) -> requests.Response:
            headers = {"Authorization": f"Bearer {idp.mint(user, AUDIENCE)}"} if user else {}
            return requests.get(f"{url}/jobs", headers=headers, timeout=30)

        assert jobs(ALICE).status_code == 200
        for outsider in (BOB, EVE):  # Bob is in the group, but the group is not the policy here
            response = jobs(outsider)
            assert response.status_code == 403 and "owner" in response.json()["error"], response.text
        assert jobs(None).status_code == 401
        assert requests.get(f"{url}/health", timeout=30).status_code == 200


def test_allow_any_user_admits_every_user_of_the_issuer(idp) -> None:
    with (
        data_directory() as data_dir,
        mlaas_api(data_dir, idp, workers=1, auth=oidc(idp, allow_any_user=True)) as url,
    ):
        for user in (ALICE, EVE):
            headers = {"Authorization": f"Bearer {idp.mint(user, AUDIENCE)}"}
            assert requests.get(f"{url}/jobs", headers=headers, timeout=30).status_code == 200
        assert requests.get(f"{url}/jobs", timeout=30).status_code == 401


def test_tfaas_policy_and_namespaces(idp, tmp_path) -> None:
    """TFaaS applies the same policy; a user let in still changes only their own namespace."""
    from tfaas.api import create_app
    from tfaas.settings import Settings

    def client(**policy: object):
        environ = {"TFAAS_AUTH": json.dumps(oidc(idp, **policy))}
        settings = Settings.load(environ=environ, model_dir=tmp_path / "models", preload=False)
        return create_app(settings).test_client()

    def bearer(user) -> dict:
        return {"Authorization": f"Bearer {idp.mint(user, AUDIENCE)}"}

    owner_only = client(owner_sub=ALICE.sub)
    assert owner_only.get("/models", headers=bearer(ALICE)).status_code == 200
    assert owner_only.get("/models", headers=bearer(BOB)).status_code == 403
    assert owner_only.delete("/delete/alice.small", headers=bearer(BOB)).status_code == 403
    group = client(allowed_groups=[GROUP])
    assert group.get("/models", headers=bearer(EVE)).status_code == 403
    refused = group.delete("/delete/alice.small", headers=bearer(BOB))
    assert refused.status_code == 403 and "'bob.'" in refused.get_json()["error"]
    assert group.delete("/delete/alice.small", headers=bearer(ALICE)).status_code == 404  # hers; not there
