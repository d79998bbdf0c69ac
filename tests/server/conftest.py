"""Fixtures of the server tests: a data directory the job user can reach, the app, a worker, the API."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from appliance.server.settings import Settings
from tests.support.processes import free_port, running, stop

REPO = Path(__file__).resolve().parents[2]


def _own_uid_range(slots: int = 88, size: int = 10, start: int | None = None) -> range:
    """Ten job uids no other test session or bench on this machine uses while this one runs.

    Jobs run as these uids when the tests run as root (as on the appliance's build machine). A worker kills
    whatever runs under a uid it gives out, so two sessions sharing a range kill each other's jobs (seen as
    jobs SIGKILLed at their start). A session holds an exclusive lock on its slot's file until it exits (the
    kernel drops it then); it starts looking at a slot of its pid, so sessions rarely try the same ones.
    """
    locks = Path(tempfile.gettempdir()) / "mlaas4hep-test-uids"
    locks.mkdir(mode=0o700, exist_ok=True)
    first_try = os.getpid() if start is None else start
    for step in range(slots):
        slot = (first_try + step) % slots
        fd = os.open(locks / str(slot), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _HELD_UID_LOCKS.append(fd)  # open for the life of the process
        first = 61100 + slot * size  # 61100-61989: above what a deployment here hands out first
        return range(first, first + size)
    raise RuntimeError(f"all {slots} test uid ranges are held by other sessions ({locks})")


_HELD_UID_LOCKS: list[int] = []
JOB_UIDS = _own_uid_range()
TINY_MODEL = {
    "layers": [{"type": "Dense", "units": 8, "activation": "relu"},
               {"type": "Dense", "units": 1, "activation": "sigmoid"}],
    "loss": "binary_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.01},
}  # fmt: skip
TINY_PARAMS = {"epochs": 1, "batch_size": 128, "chunk_size": 2000, "nevts": 4000, "seed": 3}
ENDLESS_PARAMS = {**TINY_PARAMS, "epochs": 100_000}


def server_env(data_dir: Path, **settings: object) -> dict[str, str]:
    env = {
        "MLAAS4HEP_DATA_DIR": str(data_dir),
        "MLAAS4HEP_JOB_UIDS": f"{JOB_UIDS[0]}-{JOB_UIDS[-1]}",
        # The XRootD servers of the tests listen on random ports: an API or a worker told which ones (see
        # worker_process) checks URLs and isolates jobs against them; otherwise jobs share the network.
        "MLAAS4HEP_JOB_NETWORK": "host",
        "MLAAS4HEP_HEARTBEAT_S": "1",
        "MLAAS4HEP_STALE_AFTER_S": "60",
        "MLAAS4HEP_KILL_GRACE_S": "5",
        "MLAAS4HEP_URL_CHECK_TIMEOUT_S": "5",
        "MLAAS4HEP_LOG_LEVEL": "info",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.update({f"MLAAS4HEP_{key.upper()}": str(value) for key, value in settings.items()})
    return env


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # pytest's tmp_path is private to root; the job user must reach its job directory.
    path = Path(tempfile.mkdtemp(prefix="mlaas4hep-server-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_app(data_dir: Path) -> Callable[..., object]:
    from appliance.server.api import create_app

    def make(**settings: object):
        app = create_app(Settings.load(environ=server_env(data_dir, **settings)))
        app.testing = True
        return app.test_client()

    return make


@pytest.fixture
def client(make_app):
    return make_app()


@pytest.fixture(scope="session")
def remote_samples(xrootd, sample_files) -> dict[str, str]:
    """The generated signal and background files, as URLs through the appliance's XRootD proxy."""
    return {kind: xrootd.proxy_url(xrootd.add_file(sample_files[kind], f"server/{kind}.root"))
            for kind in ("signal", "background")}  # fmt: skip


def reachable(*urls: str) -> str:
    """The ``job_network_allow`` setting that lets a job reach the servers of these root:// URLs."""
    return ",".join(sorted({f"127.0.0.1:{urlsplit(url).port}" for url in urls}))


def workflow(remote_samples: dict[str, str], **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "ttbar",
        "files": [remote_samples["signal"], remote_samples["background"]],
        "labels": [1, 0],
        "model": TINY_MODEL,
        "params": TINY_PARAMS,
    }
    body.update(overrides)
    return body


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@contextlib.contextmanager
def worker_process(
    data_dir: Path, log: Path, *reachable_urls: str, **settings: object
) -> Iterator[subprocess.Popen]:
    """``python -m appliance worker``, ready once it logs that it consumes the queue; its jobs may reach the
    servers of ``reachable_urls`` (the XRootD proxy) and nothing else."""
    if reachable_urls:
        settings.setdefault("job_network", "isolated")
        settings.setdefault("job_network_allow", reachable(*reachable_urls))
    argv = [sys.executable, "-m", "appliance", "worker", "--data-dir", str(data_dir)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **server_env(data_dir, **settings)},
                                start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: "consumer" in log.read_text().lower() or proc.poll() is not None, 60)
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def api_process(data_dir: Path, log: Path, **settings: object) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "appliance", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    with running(argv, port, log, env=server_env(data_dir, workers=1, **settings), cwd=REPO):
        yield f"http://127.0.0.1:{port}"


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.3) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met after {timeout} s")


def follow_job(get: Callable[[str], dict], job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    """Poll a job until its state is one of ``states``; returns the job."""
    job: dict = {}

    def reached() -> bool:
        nonlocal job
        job = get(job_id)
        return job["state"] in states

    try:
        wait_until(reached, timeout, 0.5)
    except TimeoutError:
        raise AssertionError(f"job {job_id} stayed {job.get('state')}: {json.dumps(job)[:2000]}") from None
    return job


def http_getter(url: str, user: str) -> Callable[[str], dict]:
    def get(job_id: str) -> dict:
        response = requests.get(f"{url}/jobs/{job_id}", headers={"X-Forwarded-User": user}, timeout=30)
        response.raise_for_status()
        return response.json()

    return get
