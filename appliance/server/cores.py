"""Which cores a job is pinned to: free cores first, across every worker process of the host.

A job asks for ``cpus`` cores and runs under ``taskset`` (``appliance.server.runner``). Taking the first
cores the worker may use put every concurrent job on core 0: a worker with ``max_concurrent_jobs`` above 1,
or two worker processes on one host, ran their one-core jobs on the same core while the others idled
(bench/results/scaling.md measured a job's run going from 14.9 s to 21.6 s).

Each core has a lock file in a directory of the host (``core_lock_dir``); a job holds an exclusive,
non-blocking ``flock`` on each core it gets for as long as it runs, so another job of this process or of
another worker process sees that core busy. The kernel drops the locks when their file descriptors close,
so a worker that dies leaves nothing to clean up. When fewer cores are free than a job asks for, it shares
busy ones: a job is never refused or delayed for want of a free core, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def core_lock_dir() -> Path:
    """The host's directory of core locks: the same for every worker process of one user on this host (a
    systemd unit's ``PrivateTmp`` makes it the unit's own, which is right for one worker per unit)."""
    return Path(tempfile.gettempdir()) / f"mlaas4hep-cores-{os.geteuid()}"


@dataclass
class CoreReservation:
    """The cores one job runs on, and the locks that keep other jobs off them while it runs."""

    cores: list[int]
    _locks: list[int] = field(default_factory=list, repr=False)

    @property
    def cpu_list(self) -> str:
        """The ``taskset --cpu-list`` argument."""
        return ",".join(str(core) for core in self.cores)

    def release(self) -> None:
        for fd in self._locks:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor of the open file drops its flock
        self._locks.clear()

    def __enter__(self) -> CoreReservation:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def reserve_cores(cpus: int, lock_dir: Path | None = None) -> CoreReservation:
    """``cpus`` of the cores this process may use (all of them when it asks for more), free ones first."""
    allowed = sorted(os.sched_getaffinity(0))
    wanted = min(max(1, cpus), len(allowed))
    directory = lock_dir or core_lock_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken: list[int] = []
    locks: list[int] = []
    for core in allowed:
        if len(taken) == wanted:
            break
        # Not inherited by the job (Python opens descriptors non-inheritable, PEP 446): the lock stays the
        # worker's, and ends with it.
        fd = os.open(directory / f"core-{core}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        taken.append(core)
        locks.append(fd)
    # Oversubscribed: the rest are busy cores, shared with the jobs that hold them.
    busy = [core for core in allowed if core not in taken]
    taken += busy[: wanted - len(taken)]
    return CoreReservation(sorted(taken), locks)
