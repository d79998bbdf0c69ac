"""The roles of the multi-machine appliance (issue #15): their templates rendered by Ansible from the roles'
own defaults, then run with the real Debian servers, and their preflight refusals.

- redis_broker: redis-server started with the rendered redis.conf answers only with the password, has its
  append-only file on, and keeps what was queued across a restart.
- job_store_postgres: a PostgreSQL cluster with the rendered settings and pg_hba.conf, and the rendered SQL
  run twice (creates once): the store's role logs in with its password over TCP; a wrong password, another
  database or the administrator over TCP are refused.
- tfaas_balancer: the rendered haproxy.cfg passes ``haproxy -c``; haproxy started with it spreads requests
  over two live replicas, and once one dies every request goes to the other.
"""

from __future__ import annotations

import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.roles.conftest import REPO, VENV_BIN, ansible_env

PASSWORD = "k7Q2-mlaas4hep-broker-password-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(tmp_path: Path, role: str, template: str, variables: dict, *more: str) -> Path:
    """Render templates of ``role`` with its defaults and ``variables``, after its preflight passed.

    Returns the first one's path; the others are beside it, named without ``.j2``.
    """
    destination = tmp_path / template.removesuffix(".j2")
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": f"Render {template}",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Run the preflight with the role's defaults",
                            "ansible.builtin.include_role": {
                                "name": role,
                                "tasks_from": "preflight.yml",
                                "public": True,
                            },
                        },
                        *(
                            {
                                "name": f"Render {name}",
                                "ansible.builtin.template": {
                                    "src": str(REPO / "roles" / role / "templates" / name),
                                    "dest": str(tmp_path / name.removesuffix(".j2")),
                                    "mode": "0644",
                                },
                            }
                            for name in (template, *more)
                        ),
                    ],
                }
            ]
        )
    )
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{extra}"],
        capture_output=True,
        text=True,
        env=ansible_env(),
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return destination


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# redis ---------------------------------------------------------------------------------------------------


def redis_cli(port: int, *command: str, password: str | None = PASSWORD) -> str:
    argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning"]
    argv += ["-a", password] if password else []
    return subprocess.run([*argv, *command], capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture
def redis_config(tmp_path: Path) -> tuple[Path, int]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("needs Debian's redis-server (scripts/debian-packages.txt)")
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    variables = {
        "redis_broker_password": PASSWORD,
        "redis_broker_port": port,
        "redis_broker_data_dir": str(data),
    }
    return render(tmp_path, "redis_broker", "redis.conf.j2", variables), port


def start_redis(config: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_port(port, process)
    return process


def test_redis_answers_only_with_the_password_and_persists(redis_config):
    config, port = redis_config
    text = config.read_text()
    assert "bind 127.0.0.1\n" in text and f'requirepass "{PASSWORD}"' in text
    server = start_redis(config, port)
    try:
        assert "NOAUTH" in redis_cli(port, "PING", password=None)
        assert "NOAUTH" in redis_cli(port, "PING", password="not-the-password")
        assert redis_cli(port, "PING") == "PONG"
        assert "aof_enabled:1" in redis_cli(port, "INFO", "persistence")
        # Reconfiguring or wiping the server is not for the appliance's clients.
        assert "unknown command" in redis_cli(port, "CONFIG", "GET", "requirepass").lower()
        assert "unknown command" in redis_cli(port, "FLUSHALL").lower()
        assert redis_cli(port, "RPUSH", "huey.redis.mlaas4hep", "job-1") == "1"
    finally:
        stop(server)
    server = start_redis(config, port)
    try:
        assert redis_cli(port, "LRANGE", "huey.redis.mlaas4hep", "0", "-1") == "job-1"
    finally:
        stop(server)


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({}, ["redis_broker_password", "0 characters"]),
        ({"redis_broker_password": "short"}, ["redis_broker_password", "5 characters"]),
        ({"redis_broker_password": PASSWORD + " x"}, ["redis_broker_password"]),
        ({"redis_broker_password": PASSWORD, "redis_broker_bind": ["0.0.0.0"]}, ["never every address"]),
        ({"redis_broker_password": PASSWORD, "redis_broker_bind": ["*"]}, ["redis_broker_bind"]),
        (
            {"redis_broker_password": PASSWORD, "redis_broker_bind": ["front.example.org"]},
            ["redis_broker_bind"],
        ),
        ({"redis_broker_password": PASSWORD, "redis_broker_bind": []}, ["redis_broker_bind"]),
    ],
    ids=["no-password", "short-password", "space-in-password", "any-ipv4", "star", "hostname", "no-address"],
)
def test_redis_broker_refuses_an_open_broker(preflight, variables, words):
    result = preflight("redis_broker", **variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for word in words:
        assert word in output, f"{word!r} not in:\n{output[-3000:]}"


def test_redis_broker_accepts_a_private_address(preflight):
    result = preflight(
        "redis_broker", redis_broker_password=PASSWORD, redis_broker_bind=["127.0.0.1", "10.0.0.4"]
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


# PostgreSQL ----------------------------------------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: the cluster belongs to Debian's ``postgres`` user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def postgres_cluster(tmp_path: Path):
    """A cluster with the role's rendered files; yields (port, the rendered create.sql, its socket folder)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("needs Debian's PostgreSQL 15 (scripts/debian-packages.txt)")
    port = free_port()
    variables = {
        "job_store_postgres_password": PASSWORD,
        "job_store_postgres_port": port,
        "job_store_postgres_clients": ["10.0.0.5", "fd00::5"],
        "job_store_postgres_version": "15",
    }
    render(tmp_path, "job_store_postgres", "mlaas4hep.conf.j2", variables, "pg_hba.conf.j2", "create.sql.j2")
    # pytest's folders are root's alone: the cluster lives where the postgres user can reach it.
    root = Path(tempfile.mkdtemp(prefix="mlaas4hep-roles-pg-"))
    shutil.copyfile(tmp_path / "mlaas4hep.conf", root / "mlaas4hep.conf")
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for path in (root, root / "mlaas4hep.conf"):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
    data = root / "data"
    initdb = as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=reject")
    assert initdb.returncode == 0, initdb.stderr
    shutil.copyfile(tmp_path / "pg_hba.conf", data / "pg_hba.conf")
    with (data / "postgresql.conf").open("a") as config:
        config.write(f"\ninclude '{root / 'mlaas4hep.conf'}'\n")
    options = f"-c unix_socket_directories={root} -c fsync=off"
    started = as_postgres(
        str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield port, (tmp_path / "create.sql").read_text(), root
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_store_role_and_logins(postgres_cluster, tmp_path):
    import psycopg

    port, create_sql, socket_dir = postgres_cluster
    hba = (tmp_path / "pg_hba.conf").read_text()
    assert "mlaas4hep  mlaas4hep  10.0.0.5/32  scram-sha-256" in hba
    assert "mlaas4hep  mlaas4hep  fd00::5/128  scram-sha-256" in hba
    assert "listen_addresses = '127.0.0.1'" in (tmp_path / "mlaas4hep.conf").read_text()

    psql = [str(PG_BIN / "psql"), "--no-psqlrc", "-h", str(socket_dir), "-p", str(port)]
    first = as_postgres(*psql, input=create_sql)
    assert first.returncode == 0, first.stderr
    assert "CREATE ROLE" in first.stdout and "CREATE DATABASE" in first.stdout
    again = as_postgres(*psql, input=create_sql)
    assert again.returncode == 0 and "CREATE" not in again.stdout, again.stdout + again.stderr

    login = {"host": "127.0.0.1", "port": port, "connect_timeout": 10}
    with psycopg.connect(**login, user="mlaas4hep", password=PASSWORD, dbname="mlaas4hep") as connection:
        assert connection.execute("SELECT current_user").fetchone() == ("mlaas4hep",)
    refused = [
        {"user": "mlaas4hep", "password": "not-the-password", "dbname": "mlaas4hep"},
        {"user": "mlaas4hep", "password": PASSWORD, "dbname": "postgres"},  # another database
        {"user": "postgres", "password": PASSWORD, "dbname": "mlaas4hep"},  # the administrator over TCP
    ]
    for credentials in refused:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**login, **credentials).close()


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({}, ["job_store_postgres_password", "0 characters"]),
        (
            {"job_store_postgres_password": PASSWORD, "job_store_postgres_listen": ["0.0.0.0"]},
            ["never every"],
        ),
        (
            {"job_store_postgres_password": PASSWORD, "job_store_postgres_clients": ["10.0.0.0/8"]},
            ["single IP"],
        ),
        ({"job_store_postgres_password": PASSWORD, "job_store_postgres_user": "postgres"}, ["not postgres"]),
    ],
    ids=["no-password", "any-address", "whole-network", "admin-user"],
)
def test_job_store_postgres_refuses_an_open_store(preflight, variables, words):
    result = preflight("job_store_postgres", **variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for word in words:
        assert word in output, f"{word!r} not in:\n{output[-3000:]}"


# haproxy -------------------------------------------------------------------------------------------------


class Replica:
    """A stand-in TFaaS replica: its readiness route and one answer naming it."""

    def __init__(self, name: str) -> None:
        replica_name = name

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"ready" if self.path == "/v2/health/ready" else replica_name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replicas():
    started = [Replica("replica-a"), Replica("replica-b")]
    yield started
    for replica in started:
        if replica.server.socket.fileno() != -1:
            replica.kill()


def test_haproxy_spreads_over_live_replicas_and_takes_a_dead_one_out(tmp_path, replicas):
    if shutil.which("haproxy") is None:
        pytest.skip("needs Debian's haproxy (scripts/debian-packages.txt)")
    port = free_port()
    variables = {
        "tfaas_balancer_port": port,
        "tfaas_balancer_replicas": [replica.address for replica in replicas],
        "tfaas_balancer_check_interval": "200ms",
    }
    config = render(tmp_path, "tfaas_balancer", "haproxy.cfg.j2", variables)
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "/v2/health/ready" in config.read_text()

    balancer = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, balancer)
        time.sleep(1)  # the first checks
        answers = {requests.get(f"http://127.0.0.1:{port}/models", timeout=10).text for _ in range(6)}
        assert answers == {"replica-a", "replica-b"}

        replicas[0].kill()
        time.sleep(1.5)  # fall 2 at 200 ms
        answers = [requests.get(f"http://127.0.0.1:{port}/models", timeout=10) for _ in range(10)]
        assert [answer.status_code for answer in answers] == [200] * 10
        assert {answer.text for answer in answers} == {"replica-b"}
    finally:
        stop(balancer)


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({}, ["tfaas_balancer_replicas"]),
        ({"tfaas_balancer_replicas": ["10.0.0.7"]}, ["ADDRESS:PORT"]),
        ({"tfaas_balancer_replicas": ["10.0.0.7:8083", "10.0.0.7:8083"]}, ["once"]),
        ({"tfaas_balancer_replicas": ["10.0.0.7:8083"], "tfaas_balancer_fall": 0}, ["tfaas_balancer_fall"]),
    ],
    ids=["no-replica", "no-port", "twice", "never-out"],
)
def test_tfaas_balancer_refuses_bad_replicas(preflight, variables, words):
    result = preflight("tfaas_balancer", **variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for word in words:
        assert word in output, f"{word!r} not in:\n{output[-3000:]}"
