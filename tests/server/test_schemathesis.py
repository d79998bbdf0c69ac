"""A bounded, seeded schemathesis run against the MLaaS4HEP API under gunicorn with auth on, token or none.

The document is the API's own ``/openapi.json``; the checks are issue #14's four (no 5xx, every status and
content type documented, every body conforming to its documented schema), as tests/tfaas/test_schemathesis.py
runs them against TFaaS. No worker runs: a job the fuzzer manages to submit stays queued, so nothing trains.
The data directory is kept small by a small upload limit and quota; examples are bounded and the seed fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.auth.cases import ALICE, AUDIENCE
from tests.auth.idp import IdentityProvider
from tests.auth.mlaas_server import data_directory, mlaas_api
from tests.server.conftest import TINY_MODEL, TINY_PARAMS
from tests.support.schemathesis import SCHEMATHESIS, run_schemathesis

MAX_EXAMPLES = 20  # per operation and phase: a few hundred requests per route at most
QUEUED_JOBS = 4  # jobs alice owns, so that the fuzzer reaches past 404 (cancelled, then deleted, as it goes)
# Generated ids are unknown jobs (404): ids drawn from alice's reach her jobs' logs, model, plots and state.
CONFIG = """
[dictionaries.jobs]
values = {jobs}

[parameters]
"path.job_id" = {{ dictionary = "jobs", probability = 0.7 }}
"query.job_id" = {{ dictionary = "jobs", probability = 0.7 }}
"query.process_name" = {{ dictionary = "jobs", probability = 0.3 }}
"""

pytestmark = pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def secured(idp: IdentityProvider) -> Iterator[tuple[str, list[str]]]:
    # Small limits keep the fuzzed uploads and submissions from filling the disk; no URL is checked, since
    # no XRootD server runs (a generated root:// URL is refused or queued either way).
    limits = {
        "max_upload_bytes": 200_000,
        "max_json_bytes": 100_000,
        "disk_quota_bytes": 5_000_000,
        "check_urls": "false",
        "follow_default_s": 1,
        "follow_max_s": 2,
    }
    with data_directory() as data_dir, mlaas_api(data_dir, idp, workers=2, **limits) as url:
        token = idp.mint(ALICE, AUDIENCE, lifetime_s=3600)
        jobs = [_submit(url, token) for _ in range(QUEUED_JOBS)]
        yield url, jobs


def _submit(url: str, token: str) -> str:
    """A job of alice's; no worker runs, so it stays queued (the files need not exist: nothing reads them)."""
    body = {
        "name": "fuzzed",
        "files": ["root://127.0.0.1:1/signal.root", "root://127.0.0.1:1/background.root"],
        "labels": [1, 0],
        "model": TINY_MODEL,
        "params": TINY_PARAMS,
    }
    answer = requests.post(url + "/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no token"])
def test_schemathesis_finds_nothing(
    secured: tuple[str, list[str]], idp: IdentityProvider, tmp_path: Path, with_token: bool
) -> None:
    url, jobs = secured
    token = idp.mint(ALICE, AUDIENCE, lifetime_s=3600)
    document = requests.get(url + "/openapi.json", timeout=60)
    document.raise_for_status()
    run = run_schemathesis(
        url,
        document.content,
        CONFIG.format(jobs=json.dumps(jobs)),
        tmp_path,
        MAX_EXAMPLES,
        token if with_token else None,
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
