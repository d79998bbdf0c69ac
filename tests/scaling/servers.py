"""Real PostgreSQL 15 and redis-server from Debian, each started on a free loopback port in a temporary
directory and stopped afterwards: the shared job store and broker of the scaling and store tests."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import free_port, running, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = Path("/usr/bin/redis-server")
REPO = Path(__file__).resolve().parents[2]


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, the cluster belongs to Debian's ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh cluster on 127.0.0.1:<free port> with a password-protected database; yields its URL."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(
            "PostgreSQL 15 is not installed (apt-get install postgresql; scripts/debian-packages.txt)"
        )
    prefix = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="mlaas4hep-pg-"))
    if prefix:
        postgres = pwd.getpwnam("postgres")
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
    data, password, port = root / "data", secrets.token_hex(12), free_port()
    password_file = root / "pw"
    password_file.write_text(password)
    if prefix:
        os.chown(password_file, postgres.pw_uid, postgres.pw_gid)
    password_file.chmod(0o600)
    run = lambda *argv: subprocess.run([*prefix, *argv], check=True, capture_output=True, cwd=root)  # noqa: E731
    run(
        str(PG_BIN / "initdb"),
        "-D",
        str(data),
        "-U",
        "mlaas4hep",
        "--auth=scram-sha-256",
        f"--pwfile={password_file}",
        "-E",
        "UTF8",
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start")
    try:
        wait_for_port(port, timeout=30)
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlaas4hep", "jobs"],
            check=True,
            capture_output=True,
            env=env,
        )
        yield f"postgresql+psycopg://mlaas4hep:{password}@127.0.0.1:{port}/jobs"
    finally:
        subprocess.run(
            [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            cwd=root,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """redis-server on 127.0.0.1:<free port>, with a password and append-only persistence; yields its URL."""
    if not REDIS_SERVER.exists():
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="mlaas4hep-redis-"))
    password, port = secrets.token_hex(16), free_port()
    config = root / "redis.conf"
    config.write_text(
        f"bind 127.0.0.1\nport {port}\nrequirepass {password}\ndir {root}\nappendonly yes\n"
        "save 60 1\ndaemonize no\nprotected-mode yes\n"
    )
    config.chmod(0o600)
    proc = subprocess.Popen(
        [str(REDIS_SERVER), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, proc, timeout=30)
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tfaas_replica(
    idp: object, models: Path, port: int, log: Path, audience: str, publisher_subs: list[str]
) -> Iterator[str]:
    """A TFaaS replica (gunicorn, one worker) under OIDC auth with the test identity provider ``idp``, any
    user of it let in, ``publisher_subs`` allowed to publish for others; yields its URL."""
    auth = {
        "mode": "oidc",
        "issuers": [idp.issuer],
        "audiences": [audience],
        "allow_any_user": True,
        "publisher_subs": publisher_subs,
    }
    env = {"TFAAS_AUTH": json.dumps(auth), "TFAAS_RELOAD_INTERVAL_S": "0.2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [sys.executable, "-m", "tfaas", "--model-dir", str(models), "--port", str(port), "--workers", "1"]
    with running(argv, port, log, env=env, cwd=REPO):
        yield f"http://127.0.0.1:{port}"
