"""The MLaaS4HEP API under real gunicorn with token checks against the test identity provider."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.auth.cases import service_auth
from tests.auth.idp import IdentityProvider
from tests.server.conftest import REPO, server_env
from tests.support.processes import free_port, running


@contextlib.contextmanager
def data_directory() -> Iterator[Path]:
    """A data directory the job user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mlaas4hep-auth-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def mlaas_api(
    data_dir: Path, idp: IdentityProvider, workers: int = 2, auth: dict | None = None, **settings: object
) -> Iterator[str]:
    """``python -m appliance serve`` with ``auth`` (default: the matrix's, on ``idp``); yields its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "appliance", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    auth = service_auth(idp) if auth is None else auth
    env = server_env(data_dir, workers=workers, auth=json.dumps(auth), **settings)
    with running(argv, port, data_dir / f"api-{port}.log", env=env, cwd=REPO):
        yield f"http://127.0.0.1:{port}"
