"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` as separate processes on loopback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlaas4hep_devtools.processes import free_port, running


@dataclass
class DaskCluster:
    address: str  # tcp://127.0.0.1:PORT of the scheduler
    worker_dir: Path  # the worker's working directory (it sees no job's files)

    def unpacked_bundles(self) -> list[str]:
        """The directories the workers unpacked shipped bundles into."""
        from distributed import Client

        def unpacked() -> list[str]:
            from appliance.inference import scoring

            return sorted(scoring._UNPACKED.values())

        with Client(self.address, timeout="10s") as client:
            return [path for paths in client.run(unpacked).values() for path in paths]


@contextlib.contextmanager
def dask_cluster(base: Path, threads: int = 2) -> Iterator[DaskCluster]:
    """One scheduler and one worker (no nanny: the worker is the process started here), stopped at the end."""
    from distributed import Client

    base.mkdir(parents=True, exist_ok=True)
    scheduler_port, worker_port = free_port(), free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    worker_dir = base / "worker"
    worker_dir.mkdir(exist_ok=True)
    scheduler = [
        sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
        "--port", str(scheduler_port), "--no-dashboard",
    ]  # fmt: skip
    worker = [
        sys.executable, "-m", "distributed.cli.dask_worker", address, "--listen-address",
        f"tcp://127.0.0.1:{worker_port}", "--nthreads", str(threads), "--no-nanny", "--no-dashboard",
        "--local-directory", str(worker_dir),
    ]  # fmt: skip
    with (
        running(scheduler, scheduler_port, base / "scheduler.log", env=env, cwd=base),
        running(worker, worker_port, base / "worker.log", env=env, cwd=worker_dir, timeout=120),
    ):
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=120)
        yield DaskCluster(address, worker_dir)
