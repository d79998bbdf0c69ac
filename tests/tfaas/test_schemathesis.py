"""A bounded, seeded schemathesis run against TFaaS under gunicorn with auth on, with a token and without.

The document is TFaaS's own ``/openapi.json``; the checks are the issue's four (no 5xx, every status and
content type documented, every body conforming to its documented schema). The examples per operation are
bounded and the seed fixed, so that a run is repeatable and takes about a minute; schemathesis runs as its own
command (its CLI), as a user would run it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.auth.cases import ALICE, AUDIENCE, service_auth
from tests.auth.idp import IdentityProvider
from tests.support.schemathesis import SCHEMATHESIS, run_schemathesis
from tests.tfaas.conftest import populate
from tests.tfaas.server import TfaasServer, tfaas_server

MAX_EXAMPLES = 25  # per operation and phase: a few hundred requests per route at most
# Most generated names would be unknown models (404): names drawn from the repository's reach the models.
CONFIG = """
[dictionaries.models]
values = ["small", "alice.small", "tfonly", "alice.raw", "legacy"]

[parameters]
"path.name" = { dictionary = "models", probability = 0.8 }
"""

pytestmark = pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path], idp: IdentityProvider
) -> Iterator[TfaasServer]:
    base = tmp_path_factory.mktemp("fuzzed")
    repo = populate(base / "models", bundle_sources)
    # Fuzzed uploads and deletes go to alice's namespace: a copy of small she owns.
    shutil.copytree(bundle_sources["small_v1"], repo / "alice.small" / "1")
    env = {"TFAAS_AUTH": json.dumps(service_auth(idp)), "TFAAS_MAX_BODY_BYTES": "200000"}
    with tfaas_server(repo, base, workers=2, env=env) as running:
        yield running


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no token"])
def test_schemathesis_finds_nothing(
    secured: TfaasServer, idp: IdentityProvider, tmp_path: Path, with_token: bool
) -> None:
    token = idp.mint(ALICE, AUDIENCE, lifetime_s=3600)
    authorization = {"Authorization": f"Bearer {token}"}
    document = requests.get(secured.url + "/openapi.json", headers=authorization, timeout=60)
    document.raise_for_status()
    run = run_schemathesis(
        secured.url, document.content, CONFIG, tmp_path, MAX_EXAMPLES, token if with_token else None
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
