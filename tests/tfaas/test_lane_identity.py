"""The fast lane with auth on: it answers only callers the auth hook lets through, and refuses as it does.

In-process, a hook placed before the auth hook tells which requests reached Flask; under gunicorn, each
request is sent with a Content-Length (the lane may answer) and chunked (always Flask) and the answers must be
the same byte for byte, for every token case of the access matrix (tests/auth/cases.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import flask
import pytest

from tests.auth.cases import AUDIENCE, CASES, EVE, service_auth
from tests.auth.idp import IdentityProvider
from tests.tfaas.conftest import populate
from tests.tfaas.server import TfaasServer, tfaas_server
from tfaas.api import create_app
from tfaas.settings import Settings

ROW = [0.1, 0.2, 0.3, 0.4]
PREDICTS = [
    ("/json", {"model": "small", "values": ROW}),
    ("/v1/models/small:predict", {"instances": [ROW]}),
    (
        "/v2/models/small/infer",
        {"inputs": [{"name": "inputs", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
    ),
]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def tokens(idp: IdentityProvider) -> dict[str, str | None]:
    return {case: (make(idp) if make else None) for case, (make, _) in CASES.items()}


def in_process(repo: Path, auth: dict) -> tuple[flask.Flask, list[str]]:
    app = create_app(Settings(model_dir=repo, preload=False, auth=auth))
    reached: list[str] = []

    def reached_flask() -> None:
        reached.append(flask.request.path)

    app.before_request_funcs.setdefault(None, []).insert(0, reached_flask)  # before the auth hook
    return app, reached


@pytest.fixture(scope="module")
def oidc_app(
    tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path], idp: IdentityProvider
) -> tuple[flask.Flask, list[str]]:
    repo = populate(tmp_path_factory.mktemp("lane-oidc") / "models", bundle_sources)
    return in_process(repo, service_auth(idp))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("path", "body"), PREDICTS, ids=[p for p, _ in PREDICTS])
def test_lane_answers_only_admitted_callers(oidc_app, tokens, case: str, path: str, body: dict) -> None:
    app, reached = oidc_app
    token, expected = tokens[case], CASES[case][1]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    before = len(reached)
    response = app.test_client().post(path, json=body, headers=headers)
    assert response.status_code == expected, response.get_data(as_text=True)
    # A good caller is answered by the lane; every refusal is Flask's auth hook's own.
    assert (len(reached) > before) == (expected != 200), case
    if expected != 200:
        assert response.json["status"] == expected and response.headers["WWW-Authenticate"].startswith(
            "Bearer"
        )


def test_forwarded_access_token_is_read_as_the_hook_reads_it(oidc_app, tokens) -> None:
    app, reached = oidc_app
    before = len(reached)
    headers = {"X-Forwarded-Access-Token": tokens["valid with the group"]}
    response = app.test_client().post("/json", json=PREDICTS[0][1], headers=headers)
    assert response.status_code == 200 and len(reached) == before


def test_proxied_call_without_a_user_is_refused_in_the_header_demo(
    tmp_path: Path, bundle_sources: dict[str, Path]
) -> None:
    """trusted-header-demo (the loopback default): a proxied request must name its user, lane or not."""
    app, reached = in_process(populate(tmp_path / "models", bundle_sources), {})
    client = app.test_client()
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    response = client.post("/json", json=PREDICTS[0][1], headers=proxied)
    assert response.status_code == 401 and reached == ["/json"]
    response = client.post("/json", json=PREDICTS[0][1], headers={**proxied, "X-Forwarded-User": "alice"})
    assert response.status_code == 200 and reached == ["/json"]  # the second one was the lane's
    response = client.post("/json", json=PREDICTS[0][1])  # on loopback, not proxied: the local user
    assert response.status_code == 200 and reached == ["/json"]


@pytest.fixture(scope="module")
def oidc_server(
    tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path], idp: IdentityProvider
) -> Iterator[TfaasServer]:
    base = tmp_path_factory.mktemp("lane-served")
    repo = populate(base / "models", bundle_sources)
    env = {"TFAAS_AUTH": json.dumps(service_auth(idp))}
    with tfaas_server(repo, base, workers=1, env=env) as running:
        yield running


def chunked(data: bytes) -> Iterator[bytes]:
    yield data


@pytest.mark.parametrize("case", list(CASES))
def test_lane_and_view_agree_under_gunicorn(oidc_server: TfaasServer, tokens, case: str) -> None:
    token, expected = tokens[case], CASES[case][1]
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for path, body in PREDICTS:
        data = json.dumps(body).encode()
        fast = oidc_server.post(path, data=data, headers=headers)
        reference = oidc_server.post(path, data=chunked(data), headers=headers)
        assert reference.request.headers.get("Transfer-Encoding") == "chunked"
        assert fast.status_code == reference.status_code == expected, (path, fast.text)
        assert fast.content == reference.content, path
        assert fast.headers.get("WWW-Authenticate") == reference.headers.get("WWW-Authenticate")


def test_outsider_token_is_refused_by_both(oidc_server: TfaasServer, idp: IdentityProvider) -> None:
    """A valid token of a caller outside the policy: 403 with the hook's words on the lane's routes too."""
    headers = {"Authorization": f"Bearer {idp.mint(EVE, AUDIENCE)}"}
    response = oidc_server.post("/json", json=PREDICTS[0][1], headers=headers)
    assert response.status_code == 403 and "groups" in response.json()["error"]
