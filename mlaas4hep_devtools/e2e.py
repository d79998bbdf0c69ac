"""The end-to-end clients' common part (molecule/default/e2e.py, molecule/multihost/e2e.py, the demo): the one
workflow they train, HTTP calls that print what they got and stop at the first surprise, and the raw branch
values a prediction sends.

Installed with the appliance, so the scripts run with the appliance's own virtual environment import it
without a copy beside them. HTTP only: it imports nothing of ``appliance``, ``tfaas`` or ``servicecore``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import NoReturn

import requests
import uproot

MODEL = {
    "layers": [
        {"type": "Dense", "units": 16, "activation": "relu"},
        {"type": "Dense", "units": 1, "activation": "sigmoid"},
    ],
    "loss": "binary_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "metrics": ["accuracy"],
}
PARAMS = {"nevts": -1, "chunk_size": 2000, "epochs": 2, "batch_size": 128, "branch": "Events", "seed": 1}


def fail(call: str, response: requests.Response | None = None, detail: str = "") -> NoReturn:
    """Stop the script (exit status 1) naming the call that failed and what it answered."""
    if response is not None:
        detail = f"HTTP {response.status_code}: {response.text[:2000]}"
    sys.exit(f"e2e: {call} failed: {detail}")


def expect(call: str, response: requests.Response, *statuses: int) -> requests.Response:
    """``response`` when its status is one of ``statuses`` (printed: the scenarios' tests read the lines)."""
    if response.status_code not in statuses:
        fail(f"{call} (expected {' or '.join(map(str, statuses))})", response)
    print(f"{call} -> {response.status_code}", flush=True)
    return response


def expect_refused(call: str, response: requests.Response, status: int) -> None:
    """A refusal in the services' one error body: ``{"error": ..., "status": N}``."""
    expect(call, response, status)
    try:
        body = response.json()
    except ValueError:
        fail(call, response, "the refusal is not JSON")
    if body.get("status") != status or not body.get("error"):
        fail(call, response, "the refusal is not the {error, status} body")


class Caller:
    """One user's session: every request carries that user's bearer token (or none)."""

    def __init__(self, token: str | None, post_timeout: float = 120) -> None:
        self.session = requests.Session()
        self.post_timeout = post_timeout
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, url: str, **kwargs) -> requests.Response:
        return self.session.get(url, timeout=60, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        return self.session.post(url, timeout=self.post_timeout, **kwargs)

    def delete(self, url: str, **kwargs) -> requests.Response:
        return self.session.delete(url, timeout=60, **kwargs)


def wait_for_params(caller: Caller, tfaas: str, name: str, timeout: float, **params: object) -> dict:
    """TFaaS's ``GET /params/NAME`` once it answers 200 (a repository is reloaded, or a model delivered,
    within seconds): its body."""
    deadline = time.monotonic() + timeout
    while True:
        answer = caller.get(f"{tfaas}/params/{name}", params=params)
        if answer.status_code == 200:
            return answer.json()
        if time.monotonic() > deadline:
            fail(f"TFaaS GET /params/{name} {params or ''}".rstrip(), answer)
        time.sleep(1)


def first_events(root_file: Path, model_params: dict, count: int = 3) -> dict[str, list]:
    """The raw values of the branches a model reads (its ``/params``), for the first ``count`` events of
    ``root_file``: the body of a ``POST /json`` prediction."""
    branches = sorted(set(model_params["features"]["dataset"]["read_branches"]))
    with uproot.open(root_file) as opened:
        events = opened["Events"].arrays(branches, entry_stop=count, library="ak")
    return {branch: events[branch].tolist() for branch in events.fields}
