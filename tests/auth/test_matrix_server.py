"""The access matrix against the MLaaS4HEP server under gunicorn: every protected route and token case;
job isolation between users. No worker runs: jobs stay queued, which is all ownership needs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests

from tests.auth.cases import ALICE, AUDIENCE, BOB, CASES, GROUP, JWKS_CACHE_S
from tests.auth.idp import IdentityProvider, User
from tests.auth.mlaas_server import data_directory, mlaas_api
from tests.server.conftest import TINY_MODEL, TINY_PARAMS, tar_gz

UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"


@dataclass
class Site:
    url: str
    idp: IdentityProvider
    samples: dict[str, str]
    alice_job: str  # queued, Alice's: the read routes find it

    def call(self, method: str, path: str, token: str | None, **arguments) -> requests.Response:
        headers = dict(arguments.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=60, **arguments)

    def workflow(self, **overrides: object) -> dict[str, object]:
        body: dict[str, object] = {
            "name": "ttbar",
            "files": [self.samples["signal"], self.samples["background"]],
            "labels": [1, 0],
            "model": TINY_MODEL,
            "params": TINY_PARAMS,
        }
        return {**body, **overrides}

    def submit(self, token: str, **overrides: object) -> dict:
        response = self.call("POST", "/jobs", token, json=self.workflow(**overrides))
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def site(idp, xrootd, sample_files) -> Iterator[Site]:
    samples = {kind: xrootd.proxy_url(xrootd.add_file(sample_files[kind], f"auth/{kind}.root"))
               for kind in ("signal", "background")}  # fmt: skip
    with data_directory() as data_dir, mlaas_api(data_dir, idp) as url:
        partial = Site(url, idp, samples, alice_job="")
        partial.alice_job = partial.submit(idp.mint(ALICE, AUDIENCE))["id"]
        yield partial


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # the route as /openapi.json names it
    path: str | Callable[[Site], str]  # a function of the site where the call needs a job of Alice's
    through: int  # the status for a caller who gets through
    arguments: dict = field(default_factory=dict)

    def call(self, site: Site, token: str | None) -> requests.Response:
        arguments = {
            key: site.workflow() if value == WORKFLOW else value for key, value in self.arguments.items()
        }
        return site.call(
            self.method, self.path(site) if callable(self.path) else self.path, token, **arguments
        )


WORKFLOW = "<the site's workflow>"
JOB = "/jobs/{job_id}"
ROUTES = [
    Route("POST", "/upload", "/upload", 201, {"data": tar_gz({"labels.txt": b"1\n0\n"})}),
    Route("POST", "/submit", "/submit", 201, {"json": WORKFLOW}),
    Route("POST", "/jobs", "/jobs", 201, {"json": WORKFLOW}),
    Route("GET", "/jobs", "/jobs", 200),
    Route("GET", JOB, lambda s: f"/jobs/{s.alice_job}", 200),
    Route("GET", "/status", lambda s: f"/status?job_id={s.alice_job}", 200),
    Route("GET", "/status_docker", lambda s: f"/status_docker?process_name={s.alice_job}", 200),
    Route("GET", "/logs", lambda s: f"/logs?job_id={s.alice_job}", 200),
    Route("GET", JOB + "/logs", lambda s: f"/jobs/{s.alice_job}/logs", 200),
    # Get through, but the model and plots exist only once the job has succeeded.
    Route("GET", "/model", lambda s: f"/model?job_id={s.alice_job}", 409),
    Route("GET", JOB + "/model", lambda s: f"/jobs/{s.alice_job}/model", 409),
    Route("GET", JOB + "/plots/{name}.png", lambda s: f"/jobs/{s.alice_job}/plots/roc.png", 409),
    Route("GET", JOB + "/plots/{name}.png", lambda s: f"/jobs/{s.alice_job}/plots/loss.png", 409),
    Route("GET", JOB + "/friends", lambda s: f"/jobs/{s.alice_job}/friends", 409),
    # Each call cancels a job made for it.
    Route("DELETE", JOB, lambda s: f"/jobs/{s.submit(s.idp.mint(ALICE, AUDIENCE))['id']}", 202),
    # Get through to an unknown job: 404, never 401/403.
    Route("GET", JOB, f"/jobs/{UNKNOWN_JOB}", 404),
    Route("DELETE", JOB, f"/jobs/{UNKNOWN_JOB}", 404),
    Route("GET", JOB + "/logs", f"/jobs/{UNKNOWN_JOB}/logs", 404),
    Route("GET", "/status", f"/status?job_id={UNKNOWN_JOB}", 404),
    # The web page's view of the caller's TFaaS models gets through (no TFaaS here: an error text).
    Route("GET", "/tfaas/models", "/tfaas/models", 200),
]
PUBLIC = ("/hello", "/health", "/metrics", "/openapi.json")
# The web page's static files hold no data: every data call the page makes is authenticated.
PUBLIC_PAGE = {"/ui": "/ui", "/ui/": "/ui/", "/ui/{name}": "/ui/app.js"}


def test_every_protected_route_is_in_the_matrix(site) -> None:
    document = requests.get(site.url + "/openapi.json", timeout=30).json()
    protected = {(method.upper(), path) for path, operations in document["paths"].items()
                 if path not in PUBLIC and path not in PUBLIC_PAGE for method in operations}  # fmt: skip
    assert protected - {(route.method, route.template) for route in ROUTES} == set()


@pytest.mark.parametrize("case", list(CASES))
def test_matrix(site, idp, case) -> None:
    make, expected = CASES[case]
    token = make(idp) if make else None
    for route in ROUTES:
        response = route.call(site, token)
        want = route.through if expected == 200 else expected
        assert response.status_code == want, (case, route.method, route.template, response.text[:300])
        if want >= 400:
            assert response.headers["Content-Type"].startswith("application/json"), (case, route.template)
            assert "error" in response.json()
        if expected in (401, 403):
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (case, route.template)


def test_public_routes_need_no_token(site) -> None:
    for path in (*PUBLIC, *PUBLIC_PAGE.values()):
        assert site.call("GET", path, None).status_code == 200, path


def test_the_forwarded_user_header_is_not_an_identity(site, idp) -> None:
    """Behind oauth2-proxy the token is what counts: the old trusted header neither logs in nor overrides."""
    assert site.call("GET", "/jobs", None, headers={"X-Forwarded-User": "alice"}).status_code == 401
    bob = idp.mint(BOB, AUDIENCE)
    mine = site.call("GET", "/jobs", bob, headers={"X-Forwarded-User": "alice"}).json()["jobs"]
    assert site.alice_job not in [job["id"] for job in mine]
    # oauth2-proxy's session mode forwards the access token in X-Forwarded-Access-Token.
    forwarded = {"X-Forwarded-Access-Token": idp.mint(ALICE, AUDIENCE), "X-Forwarded-For": "192.0.2.7"}
    assert site.call("GET", f"/jobs/{site.alice_job}", None, headers=forwarded).status_code == 200


def test_users_never_see_cancel_or_overwrite_each_others_jobs(site, idp) -> None:
    alice, bob = idp.mint(ALICE, AUDIENCE), idp.mint(BOB, AUDIENCE)
    bobs = site.submit(bob, name="higgs")
    assert bobs["model_name"] == "bob.higgs"
    job = bobs["id"]
    for path in (f"/jobs/{job}", f"/jobs/{job}/logs", f"/jobs/{job}/model", f"/jobs/{job}/plots/roc.png",
                 f"/status?job_id={job}", f"/status_docker?job_id={job}", f"/logs?job_id={job}",
                 f"/model?job_id={job}"):  # fmt: skip
        response = site.call("GET", path, alice)
        assert response.status_code == 404 and "no job" in response.json()["error"], (path, response.text)
    assert job not in [j["id"] for j in site.call("GET", "/jobs", alice).json()["jobs"]]
    assert site.call("DELETE", f"/jobs/{job}", alice).status_code == 404
    assert site.call("GET", f"/jobs/{job}", bob).json()["state"] == "queued"
    assert job in [j["id"] for j in site.call("GET", "/jobs", bob).json()["jobs"]]
    # Alice cannot aim her job at Bob's model name: the owner part is never the request's.
    sneaky = site.submit(alice, name="../bob.higgs")
    assert sneaky["model_name"].startswith("alice.") and "/" not in sneaky["model_name"]
    # Nor use Bob's upload: uploads belong to the caller.
    upload = site.call("POST", "/upload", bob, data=tar_gz({"files.txt": site.samples["signal"].encode()}))
    assert upload.status_code == 201
    body = {**site.workflow(files="files.txt", labels=[1]), "upload": upload.json()["upload"]}
    refused = site.call("POST", "/jobs", alice, json=body)
    assert refused.status_code == 400 and "references nothing uploaded" in refused.json()["error"]
    # Bob cancels his own job.
    assert site.call("DELETE", f"/jobs/{job}", bob).json()["state"] == "cancelled"


def test_a_dotted_username_gets_its_own_model_namespace(site, idp) -> None:
    """Server model names and TFaaS ownership come from one function, servicecore.naming.owner_namespace."""
    rossi = idp.mint(User(sub="sub-mario-rossi", username="mario.rossi", groups=(GROUP,)), AUDIENCE)
    mario = idp.mint(User(sub="sub-mario", username="mario", groups=(GROUP,)), AUDIENCE)
    assert site.submit(rossi, name="higgs")["model_name"] == "mario-2erossi.higgs"
    assert site.submit(mario, name="rossi.higgs")["model_name"] == "mario.rossi.higgs"


def test_key_rotated_at_the_issuer(site, idp) -> None:
    before = idp.mint(ALICE, AUDIENCE)
    assert site.call("GET", "/jobs", before).status_code == 200
    idp.rotate()
    after = idp.mint(ALICE, AUDIENCE)
    # The new key is fetched on first sight of its kid, in every worker.
    for route in ROUTES:
        assert route.call(site, after).status_code == route.through, (route.method, route.template)
    # The withdrawn key is trusted no longer than the key-set cache lives.
    time.sleep(JWKS_CACHE_S + 0.5)
    for route in ROUTES:
        response = route.call(site, before)
        assert response.status_code == 401, (route.method, route.template, response.text[:300])
        assert json.loads(response.text)["status"] == 401
