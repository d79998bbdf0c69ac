"""Start ``python -m tfaas`` under real gunicorn on a free loopback port, for the tests."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.processes import free_port, running

# The first request to a model imports TensorFlow and loads it in that worker: generous on a busy CPU.
TIMEOUT = 120


@dataclass
class TfaasServer:
    url: str
    repo: Path
    log: Path
    port: int

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=TIMEOUT, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=TIMEOUT, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(self.url + path, timeout=TIMEOUT, **kwargs)

    def warm(self, *models: str) -> None:
        """Load the models in every worker, so that later requests measure nothing but serving."""
        for _ in range(6):
            for name in models:
                self.get(f"/v2/models/{name}/ready").raise_for_status()


@contextlib.contextmanager
def tfaas_server(
    repo: Path, workdir: Path, workers: int = 1, env: dict[str, str] | None = None, base: str = ""
) -> Iterator[TfaasServer]:
    port = free_port()
    log = workdir / f"tfaas-{port}.log"
    settings = {
        "TFAAS_RELOAD_INTERVAL_S": "0.2",
        "TFAAS_BASE": base,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(env or {}),
    }
    argv = [
        sys.executable,
        "-m",
        "tfaas",
        "--model-dir",
        str(repo),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with running(argv, port, log, env=settings, cwd=Path(__file__).resolve().parents[2]):
        yield TfaasServer(f"http://127.0.0.1:{port}{base}", repo, log, port)
