"""The access matrix against TFaaS under gunicorn: each protected endpoint and token case; model ownership."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator

import pytest
import requests

from tests.auth.cases import ALICE, AUDIENCE, BOB, CASES, JWKS_CACHE_S, service_auth
from tests.auth.idp import IdentityProvider
from tests.tfaas import bundles
from tests.tfaas.server import TfaasServer, tfaas_server

ROW = [0.1, 0.2, 0.3, 0.4]
# (method, path, request arguments, status for a caller who gets through, when not 200)
ENDPOINTS = [
    ("POST", "/json", {"json": {"keys": [], "values": ROW, "model": "alice.small"}}, 200),
    ("POST", "/predict/json", {"json": {"values": ROW, "model": "alice.small"}}, 200),
    ("POST", "/v1/models/alice.small:predict", {"json": {"instances": [ROW]}}, 200),
    ("GET", "/v1/models/alice.small", {}, 200),
    ("GET", "/v1/models/alice.small/metadata", {}, 200),
    ("GET", "/v2/models/alice.small", {}, 200),
    ("GET", "/v2/models/alice.small/ready", {}, 200),
    (
        "POST",
        "/v2/models/alice.small/infer",
        {"json": {"inputs": [{"name": "inputs", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}},
        200,
    ),
    ("GET", "/models", {}, 200),
    ("GET", "/params/alice.small", {}, 200),
    # Get through but change nothing: a model that does not exist, an upload of the wrong type.
    ("DELETE", "/delete/alice.nothing", {}, 404),
    ("POST", "/upload", {"data": b"x", "headers": {"Content-Type": "text/csv"}}, 415),
]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    base = tmp_path_factory.mktemp("matrix-bundles")
    model = bundles.mlp(4, (8,), 2, seed=1)
    return {
        name: bundles.write_bundle(base / name, model, name, 4, ["a", "b"])
        for name in ("alice.small", "bob.copy")
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, idp, bundle) -> Iterator[TfaasServer]:
    import shutil

    work = tmp_path_factory.mktemp("matrix-tfaas")
    repo = work / "models"
    shutil.copytree(bundle["alice.small"], repo / "alice.small" / "1")
    env = {"TFAAS_AUTH": json.dumps(service_auth(idp))}
    with tfaas_server(repo, work, workers=2, env=env) as running:
        yield running


def call(
    server: TfaasServer, method: str, path: str, token: str | None, arguments: dict
) -> requests.Response:
    arguments = dict(arguments)
    headers = dict(arguments.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, server.url + path, headers=headers, timeout=120, **arguments)


@pytest.mark.parametrize("case", list(CASES))
def test_matrix(server, idp, case) -> None:
    make, expected = CASES[case]
    token = make(idp) if make else None
    for method, path, arguments, through in ENDPOINTS:
        response = call(server, method, path, token, arguments)
        want = through if expected == 200 else expected
        assert response.status_code == want, (case, method, path, response.text[:300])
        assert response.headers["Content-Type"].startswith("application/json"), (case, path)
        if expected in (401, 403):
            assert "error" in response.json()
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_stays_open(server) -> None:
    assert call(server, "GET", "/v2/health/live", None, {}).status_code == 200


def tar_of(bundle, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(bundle, arcname=name)
    return buffer.getvalue()


def test_users_change_only_their_own_models(server, idp, bundle) -> None:
    alice, bob = idp.mint(ALICE, AUDIENCE), idp.mint(BOB, AUDIENCE)
    gz = {"headers": {"Content-Type": "application/gzip"}}
    # Bob can neither overwrite (publish a new version of) nor delete Alice's model.
    response = call(
        server, "POST", "/upload", bob, {"data": tar_of(bundle["alice.small"], "alice.small"), **gz}
    )
    assert response.status_code == 403, response.text
    response = call(server, "DELETE", "/delete/alice.small", bob, {})
    assert response.status_code == 403, response.text
    assert (server.repo / "alice.small" / "1").is_dir()
    assert not (server.repo / "alice.small" / "2").exists()
    # In his own namespace he can; Alice then cannot delete his model.
    response = call(server, "POST", "/upload", bob, {"data": tar_of(bundle["bob.copy"], "bob.copy"), **gz})
    assert response.status_code == 201, response.text
    assert call(server, "DELETE", "/delete/bob.copy", alice, {}).status_code == 403
    assert call(server, "DELETE", "/delete/bob.copy", bob, {}).status_code == 200
    # The worker that deleted it forgets it at once; the other worker within its reload interval (1 s).
    deadline = time.monotonic() + 3.0
    while call(server, "GET", "/v1/models/bob.copy", bob, {}).status_code != 404:
        assert time.monotonic() < deadline, "a deleted model is still served after the reload interval"
        time.sleep(0.1)


def test_key_rotated_at_the_issuer(server, idp) -> None:
    before = idp.mint(ALICE, AUDIENCE)
    assert call(server, "GET", "/models", before, {}).status_code == 200
    idp.rotate()
    after = idp.mint(ALICE, AUDIENCE)
    # The new key is fetched on first sight of its kid, in every worker.
    for method, path, arguments, through in ENDPOINTS:
        assert call(server, method, path, after, arguments).status_code == through, path
    # The withdrawn key is trusted no longer than the key-set cache lives.
    time.sleep(JWKS_CACHE_S + 0.5)
    for method, path, arguments, _ in ENDPOINTS:
        assert call(server, method, path, before, arguments).status_code == 401, path


def renamed(bundle, name: str, folder) -> object:
    """A copy of ``bundle`` whose params.json declares ``name`` (TFaaS refuses a bundle named otherwise)."""
    import shutil

    copy = folder / name
    shutil.copytree(bundle, copy)
    params = json.loads((copy / "params.json").read_text())
    (copy / "params.json").write_text(json.dumps({**params, "name": name}))
    return copy


def test_a_dotted_username_has_its_own_namespace(server, idp, bundle, tmp_path) -> None:
    """``mario`` owns ``mario.*``; user ``mario.rossi``'s namespace is ``mario-2erossi``, out of his reach."""
    from tests.auth.cases import GROUP
    from tests.auth.idp import User

    mario = idp.mint(User(sub="sub-mario", username="mario", groups=(GROUP,)), AUDIENCE)
    rossi = idp.mint(User(sub="sub-mario-rossi", username="mario.rossi", groups=(GROUP,)), AUDIENCE)
    gz = {"headers": {"Content-Type": "application/gzip"}}

    def upload(token: str, name: str) -> requests.Response:
        data = tar_of(renamed(bundle["alice.small"], name, tmp_path / token[-8:]), name)
        return call(server, "POST", "/upload", token, {"data": data, **gz})

    response = upload(rossi, "mario-2erossi.higgs")
    assert response.status_code == 201, response.text
    # The raw dotted name is mario's namespace, not mario.rossi's: the error names the right prefix.
    response = upload(rossi, "mario.rossi.higgs")
    assert response.status_code == 403 and "mario-2erossi." in response.json()["error"], response.text
    # mario can neither overwrite (publish a version of) nor delete mario.rossi's model.
    assert upload(mario, "mario-2erossi.higgs").status_code == 403
    assert call(server, "DELETE", "/delete/mario-2erossi.higgs", mario, {}).status_code == 403
    assert (server.repo / "mario-2erossi.higgs" / "1").is_dir()
    assert not (server.repo / "mario-2erossi.higgs" / "2").exists()
    assert upload(mario, "mario.higgs").status_code == 201
    assert call(server, "DELETE", "/delete/mario.higgs", rossi, {}).status_code == 403
    assert call(server, "DELETE", "/delete/mario-2erossi.higgs", rossi, {}).status_code == 200
