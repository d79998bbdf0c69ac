"""Job isolation (issue #12): each job under its own uid, in its own network namespace; the worker, not the
job, checks the bundle and publishes it.

The bundle check and the network relay are tested directly; then real jobs under a real worker (as root):
a job's model.py tries to read another running job's inputs, the job store and the uploads, to write into
the model repository, and to connect to the API, and it is refused each time, while it still reaches the
XRootD proxy, trains, and is published by the worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from appliance.server.isolation import processes_of
from appliance.server.network import JobNetwork, parse_endpoints
from appliance.server.publisher import BundleRefused, BundleRules, checked_copy
from servicecore.errors import BadInputError
from tests.server.conftest import (
    ENDLESS_PARAMS,
    JOB_UIDS,
    TINY_PARAMS,
    api_process,
    follow_job,
    http_getter,
    tar_gz,
    wait_until,
    worker_process,
    workflow,
)

ALICE = {"X-Forwarded-User": "alice"}
NAME = "alice.higgs"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uids and namespaces needs root")


# -- the bundle check -------------------------------------------------------------------------------------


def make_bundle(base: Path, name: str = NAME) -> Path:
    bundle = base / "bundle"
    (bundle / "variables").mkdir(parents=True)
    (bundle / "variables" / "variables.index").write_bytes(b"index")
    (bundle / "saved_model.pb").write_bytes(b"graph")
    (bundle / "params.json").write_text(json.dumps({"name": name, "model": "saved_model.pb", "features": {}}))
    (bundle / "labels.txt").write_text("1\n0\n")
    (bundle / "metrics.json").write_text(json.dumps({"test": {"auc": 0.9}}))
    (bundle / "roc.png").write_bytes(b"\x89PNG")
    return bundle


def check(bundle: Path, tmp_path: Path, uid: int | None = None, max_bytes: int = 1 << 20) -> dict:
    rules = BundleRules(NAME, os.geteuid() if uid is None else uid, max_bytes)
    return checked_copy(bundle, tmp_path / "checked", rules)


def test_a_proper_bundle_is_copied_out(tmp_path):
    params = check(make_bundle(tmp_path), tmp_path)
    assert params["name"] == NAME
    assert (tmp_path / "checked" / "variables" / "variables.index").read_bytes() == b"index"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checked")]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda b: (b / "metrics.json").unlink(), "lacks metrics.json"),
        (lambda b: (b / "variables" / "variables.index").unlink() or (b / "variables").rmdir(), "variables"),
        (lambda b: (b / "params.json").write_text(json.dumps({"name": "bob.higgs"})), "'bob.higgs'"),
        (lambda b: (b / "params.json").write_text("[1]"), "not a JSON object"),
        (lambda b: (b / "params.json").write_text("{"), "not valid JSON"),
        (lambda b: (b / "extra.sh").write_text("x"), "unexpected entries: extra.sh"),
        (lambda b: (b / "variables" / "x").symlink_to("/etc/passwd"), "symbolic link"),
        (lambda b: (b / "labels.txt").unlink() or (b / "labels.txt").symlink_to("/etc/shadow"), "symbolic"),
        (lambda b: os.link(b / "roc.png", b / "loss.png"), "hard links"),
        (lambda b: os.mkfifo(b / "variables" / "pipe"), "not a regular file"),
        (lambda b: (b / "variables" / "big").write_bytes(b"x" * (2 << 20)), "larger than"),
    ],
)
def test_a_bundle_that_is_not_proper_is_refused(tmp_path, spoil, reason):
    bundle = make_bundle(tmp_path)
    spoil(bundle)
    with pytest.raises(BundleRefused, match=reason.replace("(", r"\(")):
        check(bundle, tmp_path)
    assert not (tmp_path / "checked").exists()


def test_the_bundle_must_belong_to_the_job(tmp_path):
    bundle = make_bundle(tmp_path)
    with pytest.raises(BundleRefused, match="belongs to uid"):
        check(bundle, tmp_path, uid=os.geteuid() + 1)
    if os.geteuid() == 0:
        os.chown(bundle / "labels.txt", 61999, 61999)
        with pytest.raises(BundleRefused, match=r"labels\.txt belongs to uid 61999"):
            check(bundle, tmp_path)


def test_a_missing_bundle_is_refused(tmp_path):
    with pytest.raises(BundleRefused, match="no bundle directory"):
        check(tmp_path / "nothing", tmp_path)
    (tmp_path / "link").symlink_to(make_bundle(tmp_path))
    with pytest.raises(BundleRefused, match="no bundle directory"):
        check(tmp_path / "link", tmp_path)


# -- the network namespace --------------------------------------------------------------------------------


def test_allowed_endpoints_are_parsed_strictly():
    assert [(e.address, e.port) for e in parse_endpoints("127.0.0.1:1094, [::1]:1094,localhost:8")] == [
        ("127.0.0.1", 1094),
        ("::1", 1094),
        ("127.0.0.1", 8),
        ("::1", 8),
    ]
    for bad in ("127.0.0.1", "proxy.example.org:1094", "127.0.0.1:0", "127.0.0.1:http"):
        with pytest.raises(BadInputError, match="job_network_allow"):
            parse_endpoints(bad)


@needs_root
def test_a_job_in_its_namespace_reaches_only_the_allowed_endpoints():
    servers = []
    for _ in range(2):
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def answer(server: socket.socket = server) -> None:
            while True:
                connection, _ = server.accept()
                connection.sendall(b"hello")
                connection.close()

        threading.Thread(target=answer, daemon=True).start()
    allowed, other = (server.getsockname()[1] for server in servers)
    probe = (
        "import socket\n"
        f"for port in ({allowed}, {other}):\n"
        "    try:\n"
        "        print(port, socket.create_connection(('127.0.0.1', port), timeout=5).recv(5).decode())\n"
        "    except OSError as err:\n"
        "        print(port, 'refused', err.errno)\n"
    )
    network = JobNetwork(parse_endpoints(f"127.0.0.1:{allowed}"))
    try:
        job = network.start(lambda: subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE))
        out, _ = job.communicate(timeout=60)
    finally:
        network.close()
        for server in servers:
            server.close()
    assert out.decode().split("\n")[:2] == [f"{allowed} hello", f"{other} refused 111"]


# -- real jobs --------------------------------------------------------------------------------------------

SPY = """
import json, os, socket, sys

def attempt(what, action):
    try:
        action()
        return "allowed"
    except OSError as err:
        return f"refused {err.errno}"

def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()

def write_into(directory):
    with open(os.path.join(directory, "planted.txt"), "w") as f:
        f.write("x")

report = {
    "other_inputs": attempt("read", lambda: open(OTHER_INPUTS + "/params.json").read()),
    "other_job": attempt("list", lambda: os.listdir(OTHER_JOB)),
    "job_store": attempt("read", lambda: open(DATA_DIR + "/jobs.db", "rb").read()),
    "uploads": attempt("list", lambda: os.listdir(DATA_DIR + "/uploads")),
    "jobs_listing": attempt("list", lambda: os.listdir(DATA_DIR + "/jobs")),
    "repository_write": attempt("write", lambda: write_into(DATA_DIR + "/models")),
    "repository_read": attempt("list", lambda: os.listdir(DATA_DIR + "/models")),
    "api": attempt("connect", lambda: connect(API_PORT)),
    "proxy": attempt("connect", lambda: connect(PROXY_PORT)),
    "own_work": attempt("write", lambda: write_into(os.environ["HOME"])),
    "uid": os.getuid(),
}
print("SPY " + json.dumps(report), file=sys.stderr, flush=True)

import keras

def model(idim):
    m = keras.Sequential([keras.Input(shape=(idim,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(loss="binary_crossentropy", optimizer="adam")
    return m
"""


def upload(url: str, files: dict[str, bytes]) -> None:
    response = requests.post(f"{url}/upload", data=tar_gz(files), headers=ALICE, timeout=60)
    assert response.status_code == 201, response.text


def submit(url: str, body: dict) -> dict:
    response = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def pinned_cores(log: str) -> str:
    """The cores a job's log says it was started on (its first line names the whole launcher)."""
    started = next(line for line in log.splitlines() if " started on " in line)
    return started.split("--cpu-list ", 1)[1].split()[0]


SLEEPER = "import time\ntime.sleep(3600)\n\ndef model(idim):\n    return None\n"


@needs_root
@pytest.mark.slow
def test_a_job_reaches_only_its_own_and_the_worker_publishes_it(data_dir, tmp_path, remote_samples):
    from urllib.parse import urlsplit

    proxy_port = urlsplit(remote_samples["signal"]).port
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values(), max_concurrent_jobs=2),
    ):
        get = http_getter(url, "alice")
        # Another job, running (its directory is open to its own uid only), that does nothing meanwhile.
        upload(url, {"sleeper.py": SLEEPER.encode()})
        sleeper = submit(
            url, workflow(remote_samples, model="sleeper.py", name="sleeper", params=ENDLESS_PARAMS)
        )
        follow_job(get, sleeper["id"], ("running",), 120)
        other = data_dir / "jobs" / sleeper["id"]
        constants = {
            "OTHER_INPUTS": str(other / "inputs"),
            "OTHER_JOB": str(other),
            "DATA_DIR": str(data_dir),
            "API_PORT": urlsplit(url).port,
            "PROXY_PORT": proxy_port,
        }
        source = "".join(f"{key} = {value!r}\n" for key, value in constants.items()) + SPY
        upload(url, {"spy.py": source.encode()})
        spy = submit(url, workflow(remote_samples, model="spy.py", name="higgs", params=TINY_PARAMS))
        done = follow_job(get, spy["id"], ("succeeded", "failed", "cancelled"), 400)
        log = requests.get(f"{url}/jobs/{spy['id']}/logs", headers=ALICE, timeout=30).text
        sleeper_log = requests.get(f"{url}/jobs/{sleeper['id']}/logs", headers=ALICE, timeout=30).text
        assert get(sleeper["id"])["state"] == "running", get(sleeper["id"])  # still in the way, all along
        assert requests.delete(f"{url}/jobs/{sleeper['id']}", headers=ALICE, timeout=30).status_code == 202
        follow_job(get, sleeper["id"], ("cancelled",), 60)
    if len(os.sched_getaffinity(0)) >= 2:
        # Two one-core jobs running at once were pinned to two different cores (appliance.server.cores).
        assert pinned_cores(log) != pinned_cores(sleeper_log), (log[:2000], sleeper_log[:2000])
    line = next((line for line in log.splitlines() if line.startswith("SPY ")), None)
    assert line is not None, log[-3000:]
    report = json.loads(line[4:])
    assert report.pop("uid") in JOB_UIDS
    assert report == {
        "other_inputs": "refused 13",
        "other_job": "refused 13",
        "job_store": "refused 13",
        "uploads": "refused 13",
        "jobs_listing": "refused 13",
        "repository_write": "refused 13",
        "repository_read": "refused 13",
        "api": "refused 111",
        "proxy": "allowed",
        "own_work": "allowed",
    }, log[-3000:]
    # It still trained, and the worker (not the job) published it.
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["name"] == "alice.higgs" and done["result"]["version"] == 1
    published = data_dir / "models" / "alice.higgs" / "1"
    assert json.loads((published / "params.json").read_text())["name"] == "alice.higgs"
    assert {p.stat().st_uid for p in [published, *published.rglob("*")]} == {0}
    assert not (data_dir / "models" / "planted.txt").exists()
    assert "bundle checked; publishing alice.higgs" in log
    assert "--publish" not in log
    # Afterwards the job's directory and its work are the server's again.
    spy_dir = data_dir / "jobs" / spy["id"]
    assert spy_dir.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_uid for p in [spy_dir / "work", *(spy_dir / "work").rglob("*")]} == {0}


# -- identities and what a job leaves behind --------------------------------------------------------------


def test_each_running_job_gets_a_uid_no_other_running_job_holds(tmp_path):
    from appliance.server.store import FINISHED_STATES, QUEUED, Job, JobStore, NoFreeIdentityError

    store = JobStore(tmp_path / "jobs.db")
    assert (tmp_path / "jobs.db").stat().st_mode & 0o077 == 0  # everyone's jobs: no job may read it
    for n in range(4):
        job = Job(f"{n:032x}", "alice", "x", "alice.x", QUEUED, resources={}, created=float(n))
        store.add(job)
    uids = range(61000, 61002)
    first, second = (store.claim(f"{n:032x}", "w:1", uids) for n in range(2))
    assert (first.uid, second.uid) == (61000, 61001)
    with pytest.raises(NoFreeIdentityError):
        store.claim(f"{2:032x}", "w:1", uids)
    assert store.get(f"{2:032x}").state == QUEUED  # it waits, untouched
    store.finish(first.id, FINISHED_STATES[0])
    assert store.claim(f"{2:032x}", "w:1", uids).uid == 61000  # a finished job's uid is free again
    assert store.claim(f"{3:032x}", "w:1", None).uid is None  # a worker that is not root gives none


@needs_root
def test_a_job_its_dead_worker_left_running_is_failed_and_stopped(tmp_path):
    """A job runs in its own session under its uid: when its worker dies, the next worker must end it."""
    from appliance.server.queue import JobQueue
    from appliance.server.settings import Settings
    from appliance.server.store import FAILED, QUEUED, Job

    uid = JOB_UIDS[-1]
    queue = JobQueue(Settings(data_dir=tmp_path, job_uids=f"{JOB_UIDS[0]}-{JOB_UIDS[-1]}"))
    queue.store.add(Job("c" * 32, "alice", "x", "alice.x", QUEUED, resources={}, created=1.0))
    dead_worker = subprocess.Popen(["true"])
    dead_worker.wait()
    queue.store.claim("c" * 32, f"{socket.gethostname()}:{dead_worker.pid}", range(uid, uid + 1))
    training = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "sleep", "300"],
        start_new_session=True,
    )
    try:
        wait_until(lambda: training.pid in processes_of(uid), 10)
        assert queue.recover()["failed"] == ["c" * 32]
        assert queue.store.get("c" * 32).state == FAILED
        assert training.wait(timeout=10) == -signal.SIGKILL
    finally:
        training.kill()
        training.wait()


@needs_root
def test_what_a_uid_left_behind_is_swept(tmp_path):
    from appliance.server.isolation import remove_temporary_leftovers, revoke_stale_grants

    uid = 61998
    planted = [Path(f"/tmp/h3-leftover-{os.getpid()}"), Path(f"/dev/shm/h3-leftover-{os.getpid()}")]
    for path in planted:
        path.write_text("secret")
        os.chown(path, uid, uid)
    mine = Path(f"/tmp/h3-kept-{os.getpid()}")
    mine.write_text("not the job's")
    jobs = tmp_path / "jobs"
    stale, current = jobs / ("a" * 32), jobs / ("b" * 32)
    for directory in (stale, current):
        directory.mkdir(parents=True)
        os.chown(directory, 0, uid)
        directory.chmod(0o750)
    try:
        remove_temporary_leftovers(uid)
        revoke_stale_grants(jobs, uid, keep=current)
        assert not any(path.exists() for path in planted)
        assert mine.read_text() == "not the job's"
        assert (stale.stat().st_gid, stale.stat().st_mode & 0o777) == (0, 0o700)
        assert (current.stat().st_gid, current.stat().st_mode & 0o777) == (uid, 0o750)
    finally:
        for path in [*planted, mine]:
            path.unlink(missing_ok=True)


@needs_root
@pytest.mark.slow
def test_no_file_a_job_writes_outgrows_the_bundle_limit(data_dir, tmp_path, remote_samples):
    writer = b"import os\nwith open(os.environ['HOME'] + '/big', 'wb') as f:\n    f.write(bytes(3 << 20))\n"
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values(), max_bundle_bytes=1 << 20),
    ):
        upload(url, {"writer.py": writer + b"\ndef model(idim):\n    return None\n"})
        job = submit(url, workflow(remote_samples, model="writer.py", name="writer"))
        done = follow_job(http_getter(url, "alice"), job["id"], ("succeeded", "failed", "cancelled"), 300)
    assert done["state"] == "failed" and "File too large" in done["error"], done["error"]
    assert (data_dir / "jobs" / job["id"] / "work" / "big").stat().st_size <= 1 << 20


@needs_root
@pytest.mark.slow
def test_a_job_waits_queued_while_every_uid_is_busy(data_dir, tmp_path, remote_samples):
    one_uid = f"{JOB_UIDS[0]}-{JOB_UIDS[0]}"
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(
            data_dir, tmp_path / "w.log", *remote_samples.values(), max_concurrent_jobs=2, job_uids=one_uid
        ),
    ):
        get = http_getter(url, "alice")
        upload(url, {"sleeper.py": SLEEPER.encode()})
        sleeping = {"model": "sleeper.py", "params": ENDLESS_PARAMS}
        first = submit(url, workflow(remote_samples, name="first", **sleeping))
        follow_job(get, first["id"], ("running",), 120)
        second = submit(url, workflow(remote_samples, name="second", **sleeping))
        time.sleep(8)  # a free worker thread took it, found no free uid and put it back for later
        assert get(second["id"])["state"] == "queued"
        assert "waits: all 1 job uids are in use" in (tmp_path / "w.log").read_text()
        requests.delete(f"{url}/jobs/{first['id']}", headers=ALICE, timeout=30)
        follow_job(get, first["id"], ("cancelled",), 60)
        follow_job(get, second["id"], ("running",), 60)
        requests.delete(f"{url}/jobs/{second['id']}", headers=ALICE, timeout=30)
        follow_job(get, second["id"], ("cancelled",), 60)
