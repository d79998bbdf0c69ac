"""One execution of a job: the sandboxed training (or predict) subprocess, its limits, cancel checks, outcome.

One piece although above 400 lines: a multi-worker task's meeting, environment and ending are steps of the
same execution (its directory, uid, namespace and watch), and read best between those of a one-worker job.

The job runs ``python -m appliance train ...`` (a predict job: ``python -m appliance predict ...`` over the
bundle the worker staged, ``appliance.server.predict_worker``) as an argv list (never a shell) in its own
directory::

    prlimit --as=MEMORY --cpu=CPUS*WALL --fsize=MAX_BUNDLE -- taskset --cpu-list CORES
        setpriv --pdeathsig KILL [--reuid U --regid U --clear-groups] -- python -m appliance train ...

``setpriv`` drops to the job's own uid (``appliance.server.isolation``; only when the worker is root) and
makes the kernel kill the job if its worker dies, so a killed worker never leaves an orphan training
behind. ``prlimit`` caps the address space (the memory request), CPU seconds (a backstop) and the size of any
file the job writes (``max_bundle_bytes``; its log included); ``taskset`` pins the job to as many cores as it
asked for, free ones first (``appliance.server.cores``), and the thread pools of TensorFlow and BLAS are sized
to match. Wall time is enforced by the worker's own timer (SIGTERM to the job's process group, SIGKILL after
``kill_grace_s``). PID 1 is not systemd on every host this runs on, so transient ``systemd-run`` scopes are
not used. A root worker starts the job in its own network namespace (``appliance.server.network``).

The job writes only ``work/``; it never gets ``--publish``. When it succeeds the worker checks its bundle
and publishes it (``appliance.server.publisher``), or checks and archives its friend trees.

One task of a multi-worker job (``TaskPlan``) first meets the others: it reserves a port on
``worker_address``, registers ``address:port`` in the store and waits until all the job's tasks have, at most
``rendezvous_timeout_s`` (then: "k of N workers joined within T s"). The training then gets ``TF_CONFIG``
naming every task; its namespace reaches the peers' addresses and is reached through the reserved port
(``JobNetwork``'s inbound relay). The tasks of one job on one host share its uid and directory: every task
opens the directory before it registers (so nothing of a sibling runs yet), and the last to end on the host
kills what the uid left and closes it. A task other than 0 writes its own progress, specs and stdout files and
no bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.server.cores import CoreReservation, reserve_cores
from appliance.server.isolation import JobIdentity, close_job_dir, kill_processes_of, open_job_dir
from appliance.server.jobdir import JobDir
from appliance.server.network import (
    JobNetwork,
    listen_for_peers,
    parse_endpoints,
    parse_port_range,
    scheduler_endpoints,
)
from appliance.server.predict_worker import collect_friends, is_predict, predict_result, stdout_summary
from appliance.server.progress import last_error
from appliance.server.publisher import BundleRefused, BundleRules, checked_copy, deliver
from appliance.server.resources import Resources
from appliance.server.settings import Settings
from appliance.server.store import CANCELLED, FAILED, SUCCEEDED, Job, JobStore, iso, now
from servicecore.errors import BadInputError

log = logging.getLogger(__name__)

POLL_S = 0.5
EXIT_BAD_INPUT = 2
Outcome = tuple[str, str | None, dict[str, Any] | None]
RENDEZVOUS_POLL_S = 0.5
JOB_ENDED = "the job ended on another worker"


@dataclass(frozen=True)
class TaskPlan:
    """This run is task ``index`` of a job spread over ``count`` workers."""

    index: int
    count: int


class JobRun:
    """One execution of a job's training subprocess, with its limits, cancel checks and outcome."""

    def __init__(
        self,
        settings: Settings,
        job: Job,
        store: JobStore,
        worker: str,
        identity: JobIdentity | None,
        task: TaskPlan | None = None,
    ) -> None:
        self.settings = settings
        self.job = job
        self.directory = JobDir.of(settings, job.id)
        self.store = store
        self.worker = worker
        self.resources = Resources(**job.resources)
        self.identity = identity
        self.task = task
        self.cluster: list[str] = []  # every task's address:port, once they met
        self.listener: socket.socket | None = None  # the reserved port peers reach this task at
        self.cores: CoreReservation | None = None  # the cores the job is pinned to while it runs

    def _task_file(self, name: str, suffix: str) -> Path:
        """A task's own file in ``work/`` (task 0 keeps the one-worker names)."""
        return self.directory.work / f"{name}-task{self.task.index}{suffix}"  # type: ignore[union-attr]

    @property
    def _chief(self) -> bool:
        return self.task is None or self.task.index == 0

    def argv(self) -> list[str]:
        d = self.directory
        request = self.job.request
        if is_predict(request):
            command = [
                self.settings.python or sys.executable, "-m", "appliance", "predict",
                "--files", str(d.files_list),
                "--bundle", str(d.model_bundle),
                "--fout", request.get("fout") or str(d.work_friends),
                # The local Dask cluster's worker threads: as many as the cores the job was given.
                "--workers", str(self.resources.cpus),
                # Or the appliance's Dask scheduler, whose workers get the bundle's bytes, not its path.
                *(["--scheduler", self.settings.dask_scheduler] if self.settings.dask_scheduler else []),
                "--progress-file", str(d.progress),
            ]  # fmt: skip
            return self._limited(command)
        train = [
            self.settings.python or sys.executable, "-m", "appliance", "train",
            "--files", str(d.files_list),
            "--labels", str(d.labels),
            "--model", str(d.model_file(request["model_file"])),
            "--params", str(d.params),
            *(["--preproc", str(d.preproc)] if request.get("preproc") else []),
            "--specs", str(d.specs if self._chief else self._task_file("specs", ".json")),
            "--fout", str(d.work_bundle if self._chief else self._task_file("bundle", "")),
            "--name", self.job.model_name,
            "--progress-file", str(d.progress if self._chief else self._task_file("progress", ".jsonl")),
            "--quiet",
            *(["--init-model", str(d.init_model)] if request.get("init_model") else []),
        ]  # fmt: skip
        return self._limited(train)

    def _limited(self, command: list[str]) -> list[str]:
        r = self.resources
        limits = [
            # CUDA reserves far more address space than it uses: a GPU job's memory is its data segment.
            "prlimit", f"--{'data' if r.device == 'gpu' else 'as'}={r.memory_mb * 1024 * 1024}",
            f"--cpu={r.cpus * r.wall_time_s + 60}",
            # No file the job writes (its log included) may outgrow the largest bundle it may make.
            f"--fsize={self.settings.max_bundle_bytes}", "--",
            "taskset", "--cpu-list", self.cores.cpu_list if self.cores is not None else _cpu_list(r.cpus),
        ]  # fmt: skip
        # setpriv comes last, so that it is the job's own parent-death signal it sets and the user switch
        # happens right before the interpreter starts.
        launcher = ["setpriv", "--pdeathsig", "KILL"]
        if self.identity is not None:
            uid, gid = str(self.identity.uid), str(self.identity.gid)
            launcher += ["--reuid", uid, "--regid", gid, "--clear-groups"]
        return [*limits, *launcher, "--", *command]

    def environment(self) -> dict[str, str]:
        threads = str(self.resources.cpus)
        d = self.directory
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(d.work),
            "TMPDIR": str(d.tmp),
            "LANG": "C.UTF-8",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "2",
            "MPLCONFIGDIR": str(d.matplotlib),
        }
        # The XRootD client's settings and grid credentials of the host reach the job; nothing else does.
        env.update({k: v for k, v in os.environ.items() if k.startswith("XRD_") or k == "X509_USER_PROXY"})
        if self.resources.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            # TensorFlow would take every GPU's whole memory at start, leaving none to the host's other jobs.
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        env.update(self.settings.job_env)
        if self.task is not None:
            config = {
                "cluster": {"worker": self.cluster},
                "task": {"type": "worker", "index": self.task.index},
            }
            env["TF_CONFIG"] = json.dumps(config)
        return env

    def network(self) -> JobNetwork | None:
        """The job's own network namespace, unless the settings or the worker's rights say otherwise."""
        if self.identity is None or self.settings.job_network == "host":
            return None
        allowed = parse_endpoints(self.settings.job_network_allow)
        if is_predict(self.job.request):
            allowed += [e for e in scheduler_endpoints(self.settings.dask_scheduler) if e not in allowed]
        inbound = None
        if self.task is not None:
            # The peers are reached through relays like any allowed endpoint; this task's own port through
            # the inbound relay from the reserved port.
            peers = [address for i, address in enumerate(self.cluster) if i != self.task.index]
            allowed += [e for e in parse_endpoints(",".join(peers), "a peer's address") if e not in allowed]
            own = parse_endpoints(self.cluster[self.task.index], "worker_address")[0]
            inbound = (own, self.listener)
        return JobNetwork(allowed, inbound=inbound)

    def run(self) -> Outcome:
        d = self.directory
        problem = self._stage_model()
        if problem is not None:
            with d.log.open("ab") as log_file:
                log_file.write(_log_line(problem))
            return FAILED, problem, None
        open_job_dir(d, self.identity, self.settings.jobs_dir)
        last_on_host = True
        try:
            if self.task is not None:
                failure = self._rendezvous()
                if failure is not None:
                    return failure
            network = self.network()
            if network is None and self.listener is not None:
                self.listener.close()  # the job binds the port itself, on the host's network
            try:
                code, stopped_for = self._execute(network)
            finally:
                if network is not None:
                    network.close()
                if self.task is not None:
                    last_on_host = self.store.finish_task(self.job.id, self.task.index, socket.gethostname())
                if self.identity is not None and last_on_host:
                    # Nothing of the job may run on while its output is checked (a sibling task on this host
                    # shares the uid: the last one to end does this).
                    kill_processes_of(self.identity.uid)
            return self._outcome(code, stopped_for)
        finally:
            if self.listener is not None:
                self.listener.close()
            if last_on_host:
                close_job_dir(d, self.identity)

    def _rendezvous(self) -> Outcome | None:
        """Reserve a port, register it, and wait for every task of the job to have registered; the outcome
        when they do not within ``rendezvous_timeout_s`` (or the job ended meanwhile), else None."""
        assert self.task is not None
        host = self.settings.worker_address
        try:
            listener = listen_for_peers(host, parse_port_range(self.settings.task_ports, "task_ports"))
        except BadInputError as err:  # every port of the range taken by other tasks of this host
            return FAILED, str(err), None
        self.listener = listener
        port = listener.getsockname()[1]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.store.register_task(self.job.id, self.task.index, address)
        with self.directory.log.open("ab") as log_file:
            log_file.write(
                _log_line(f"task {self.task.index} of {self.task.count} at {address} on {self.worker}")
            )
        timeout = self.settings.rendezvous_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            found = self.store.task_addresses(self.job.id)
            if len(found) >= self.task.count:
                self.cluster = [found[i] for i in range(self.task.count)]
                return None
            if self.store.job_stopped(self.job.id):
                return self._stopped_outcome()
            if time.monotonic() >= deadline:
                return FAILED, f"{len(found)} of {self.task.count} workers joined within {timeout:g} s", None
            time.sleep(RENDEZVOUS_POLL_S)

    def _stopped_outcome(self) -> Outcome:
        job = self.store.get(self.job.id)
        if job is not None and job.cancel_requested:
            return CANCELLED, "cancelled while running", None
        return FAILED, JOB_ENDED, None

    def _stage_model(self) -> str | None:
        """The bundle a job reads (a warm start's init_model, a predict job's model), copied from the model
        repository into the job's inputs: the job reads its inputs only, never the repository. Returns why
        it cannot be, or None."""
        request = self.job.request
        if is_predict(request):
            what, name, version = "model", str(request["model"]), int(request["version"])
            target = self.directory.model_bundle
        elif request.get("init_model"):
            wanted = request["init_model"]
            what, name, version = "init_model", str(wanted["name"]), int(wanted["version"])
            target = self.directory.init_model
        else:
            return None
        source = self.settings.model_repository / name / str(version)
        if version == 1 and not source.is_dir():
            source = source.parent  # an original-style bundle, without a version folder
        if not (source / "params.json").is_file():
            return f"{what} {name}/{version} was deleted before the job started: submit it again"
        shutil.rmtree(target, ignore_errors=True)
        copy_readable(source, target)
        return None

    def _execute(self, network: JobNetwork | None) -> tuple[int, str | None]:
        # Free cores first, across this host's workers (appliance.server.cores), held until the job ends.
        with reserve_cores(self.resources.cpus) as self.cores:
            try:
                return self._execute_on_cores(network)
            finally:
                self.cores = None

    def _execute_on_cores(self, network: JobNetwork | None) -> tuple[int, str | None]:
        argv = self.argv()
        d = self.directory
        result = d.result if self._chief else d.root / f"result-task{self.task.index}.json"  # type: ignore[union-attr]
        with d.log.open("ab") as log_file, result.open("wb") as stdout:
            log_file.write(_log_line(f"started on {self.worker}: {' '.join(argv)}"))
            log_file.flush()

            def launch() -> subprocess.Popen:
                return subprocess.Popen(
                    argv,
                    cwd=d.work,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=log_file,
                    start_new_session=True,
                )

            process = network.start(launch) if network is not None else launch()
            stopped_for = self._watch(process)
            code = process.returncode
            # Whatever the job left running in its session goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            log_file.write(_log_line(f"{self._what} exited with code {code}"))
        return code, stopped_for

    def _watch(self, process: subprocess.Popen) -> str | None:
        """Wait for the process; stop it on cancel or at the wall-time limit. Returns why it was stopped."""
        deadline = time.monotonic() + self.resources.wall_time_s
        next_beat = 0.0
        stopped_for = None
        while True:
            try:
                process.wait(POLL_S)
                return stopped_for
            except subprocess.TimeoutExpired:
                pass
            if stopped_for is not None:
                continue
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.settings.heartbeat_s
                if self.task is None and self.store.heartbeat(self.job.id):
                    stopped_for = "cancelled"
                elif self.task is not None and self.store.job_stopped(self.job.id):
                    # A cancel, or another task ended the job: this one must not wait on it forever.
                    stopped_for = "cancelled" if self._stopped_outcome()[0] == CANCELLED else JOB_ENDED
            if stopped_for is None and time.monotonic() >= deadline:
                stopped_for = f"wall-time limit of {self.resources.wall_time_s} s exceeded"
            if stopped_for is not None:
                threading.Thread(
                    target=_terminate, args=(process, self.settings.kill_grace_s), daemon=True
                ).start()

    def _outcome(self, code: int, stopped_for: str | None) -> Outcome:
        if stopped_for == "cancelled":
            return CANCELLED, "cancelled while running", None
        if stopped_for is not None:
            return FAILED, stopped_for, None
        if code == 0 and not self._chief:
            return SUCCEEDED, None, {"task": self.task.index}  # type: ignore[union-attr]
        if code == 0:
            return self._friends() if is_predict(self.job.request) else self._publish()
        if code == EXIT_BAD_INPUT:
            return FAILED, f"bad input: {last_error(self.directory)}", None
        if code < 0:
            name = signal.Signals(-code).name
            hint = (
                " (memory limit reached?)"
                if -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT)
                else ""
            )
            return FAILED, f"{self._what} was killed by {name}{hint}; see the logs", None
        return FAILED, f"{self._what} failed with exit code {code}: {last_error(self.directory)}", None

    @property
    def _what(self) -> str:
        return "predict" if is_predict(self.job.request) else "training"

    def _friends(self) -> Outcome:
        """A predict job's result: its friend trees checked and archived for download, or (written through
        XRootD) the summary it printed."""
        d = self.directory
        request = self.job.request
        if request.get("fout"):
            return SUCCEEDED, None, predict_result(stdout_summary(d), request)
        owner = self.identity.uid if self.identity is not None else os.geteuid()
        try:
            rules = BundleRules(self.job.model_name, owner, self.settings.max_bundle_bytes)
            summary = collect_friends(d, rules)
        except BundleRefused as err:
            with d.log.open("ab") as log_file:
                log_file.write(_log_line(f"friend trees refused: {err}"))
            return FAILED, f"the job's friend trees were refused: {err}", None
        with d.log.open("ab") as log_file:
            log_file.write(_log_line("friend trees checked and archived"))
        return SUCCEEDED, None, predict_result(summary, request)

    def _publish(self) -> Outcome:
        """Check the job's bundle, copy it out of ``work/`` and publish it (the worker does, not the job)."""
        d = self.directory
        owner = self.identity.uid if self.identity is not None else os.geteuid()
        rules = BundleRules(self.job.model_name, owner, self.settings.max_bundle_bytes)
        try:
            checked_copy(d.work_bundle, d.bundle, rules)
        except BundleRefused as err:
            with d.log.open("ab") as log_file:
                log_file.write(_log_line(f"bundle refused: {err}"))
            return FAILED, f"the job's bundle was refused: {err}", None
        with d.log.open("ab") as log_file:
            log_file.write(_log_line(f"bundle checked; publishing {self.job.model_name}"))
        return SUCCEEDED, None, deliver(d, self.job.model_name, self.settings.model_repository)


def copy_readable(source: Path, target: Path) -> None:
    """Regular files and folders of ``source`` into ``target``, readable by any uid (0644, 0755). Links and
    special files are left out: the worker is root, and must not read for a job what the job could not."""
    for folder, directories, files in os.walk(source, followlinks=False):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(mode=0o755, parents=True, exist_ok=True)
        (target / relative).chmod(0o755)
        directories[:] = [name for name in directories if not Path(folder, name).is_symlink()]
        for name in files:
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            shutil.copyfile(path, target / relative / name, follow_symlinks=False)
            (target / relative / name).chmod(0o644)


def _terminate(process: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _cpu_list(cpus: int) -> str:
    """The first ``cpus`` cores this worker may use (all of them when it asks for more than there are): what
    ``argv`` shows outside a run, which reserves the job's cores (``appliance.server.cores``)."""
    allowed = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in allowed[: max(1, cpus)])


def _log_line(text: str) -> bytes:
    return f"[mlaas4hep {iso(now())}] {text}\n".encode()
