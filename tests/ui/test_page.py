"""The web page's routes with OIDC identities: the page is public, every data call is not, and the models
list comes from a real TFaaS asked with the caller's own token."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.server.api import create_app
from appliance.server.settings import Settings
from tests.auth.cases import ALICE, AUDIENCE, BOB, service_auth
from tests.auth.idp import IdentityProvider
from tests.server.conftest import server_env
from tests.tfaas import bundles
from tests.tfaas.server import TfaasServer, tfaas_server


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def tfaas(tmp_path_factory, idp) -> Iterator[TfaasServer]:
    work = tmp_path_factory.mktemp("ui-tfaas")
    model = bundles.mlp(4, (8,), 1, seed=1)
    for name, version in (("alice.higgs", 1), ("alice.higgs", 2), ("bob.ttbar", 1)):
        bundles.write_bundle(work / "models" / name / str(version), model, name, 4, ["a", "b", "c", "d"])
    env = {"TFAAS_AUTH": json.dumps(service_auth(idp))}
    with tfaas_server(work / "models", work, env=env) as running:
        yield running


@pytest.fixture
def make_client(idp):
    directories = []

    def make(**settings: object):
        data_dir = Path(tempfile.mkdtemp(prefix="mlaas4hep-ui-"))
        directories.append(data_dir)
        environ = server_env(data_dir, auth=json.dumps(service_auth(idp)), **settings)
        app = create_app(Settings.load(environ=environ))
        app.testing = True
        return app.test_client()

    yield make
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def bearer(idp: IdentityProvider, user=ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.mint(user, AUDIENCE)}"}


def test_the_page_and_its_files_are_public_and_the_data_is_not(make_client):
    client = make_client()
    redirect = client.get("/ui")
    assert redirect.status_code == 308 and redirect.headers["Location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<script src="/ui/app.js"' in html and 'id="jobs"' in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert "sessionStorage" in script.get_data(as_text=True)
    assert client.get("/ui/style.css").mimetype == "text/css"
    missing = client.get("/ui/secrets.txt")
    assert missing.status_code == 404 and missing.get_json()["status"] == 404
    assert client.get("/ui/../jobs.db").status_code == 404
    for path in ("/jobs", "/tfaas/models"):
        refused = client.get(path)
        assert refused.status_code == 401 and refused.get_json()["status"] == 401


def test_models_without_a_tfaas_say_so(make_client, idp):
    answer = make_client().get("/tfaas/models", headers=bearer(idp))
    assert answer.status_code == 200
    expected = {"tfaas": "", "models": [], "error": "no TFaaS is set for this server (tfaas_url)"}
    assert answer.get_json() == expected


def test_models_are_the_callers_own_with_their_versions(make_client, idp, tfaas):
    client = make_client(tfaas_url=tfaas.url)
    alice = client.get("/tfaas/models", headers=bearer(idp)).get_json()
    assert alice == {
        "tfaas": tfaas.url,
        "models": [{"name": "alice.higgs", "version": 2, "versions": [1, 2]}],
        "error": None,
    }
    bob = client.get("/tfaas/models", headers=bearer(idp, BOB)).get_json()
    assert [model["name"] for model in bob["models"]] == ["bob.ttbar"]


def test_the_callers_token_is_what_tfaas_sees(make_client, idp, tfaas):
    # A token for another audience gets past nobody: the server forwards the caller's token, not its own.
    client = make_client(tfaas_url=tfaas.url)
    # oauth2-proxy's way: the token in X-Forwarded-Access-Token, no Authorization header.
    forwarded = {"X-Forwarded-Access-Token": idp.mint(ALICE, AUDIENCE)}
    assert client.get("/tfaas/models", headers=forwarded).get_json()["models"][0]["name"] == "alice.higgs"
    wrong = {"Authorization": f"Bearer {idp.mint(ALICE, 'some-other-service')}"}
    assert client.get("/tfaas/models", headers=wrong).status_code == 401


def test_a_tfaas_that_is_down_is_said_not_failed(make_client, idp):
    from tests.support.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    answer = make_client(tfaas_url=url).get("/tfaas/models", headers=bearer(idp)).get_json()
    assert answer["models"] == [] and answer["error"].startswith(f"TFaaS at {url} did not answer")


def test_a_bad_tfaas_url_is_refused_at_start(tmp_path):
    from servicecore.errors import BadInputError

    with pytest.raises(BadInputError, match="tfaas_url"):
        Settings.load(environ=server_env(tmp_path, tfaas_url="ftp://tfaas"))
