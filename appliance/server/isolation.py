"""Each job under its own identity: a uid/gid of a reserved range, and who may reach what on disk.

When the worker runs as root (as on the appliance), a job runs as a uid of ``job_uids`` (e.g. 61000-61999)
that no other running job holds (``JobStore.claim`` allots it), with the same number as its only group:

- the job's directory is 0700 to the server, except while the job runs: then its group is the job's gid and
  its mode 0750, so the job passes through it and reads ``inputs/``; ``work/`` is the job's own (uid:gid,
  readable by the API, which follows the progress file);
- the rest of the data directory is closed to it: ``DATA_DIR`` and ``jobs/`` may be passed through but not
  listed (``o+x`` only), while uploads, the model repository and the job store have no access for others;
- when the job ends, every process of its uid is killed, ``work/`` is handed to the server, the directory is
  0700 again, and files the uid left in the shared temporary directories are removed, so that the next job
  given the same uid inherits nothing.

A worker that is not root cannot switch users: jobs then run as the worker's user, without this isolation.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.server.jobdir import PRIVATE_MODE, RUNNING_MODE, JobDir
from appliance.server.settings import Settings
from servicecore.errors import BadInputError

SHARED_TEMPORARY = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))  # noqa: S108 - we clean them
NO_ACCESS_FOR_OTHERS = 0o007
PASS_THROUGH_ONLY = 0o001


@dataclass(frozen=True)
class JobIdentity:
    """The uid a job runs as; its gid is the same number, its only group."""

    uid: int

    @property
    def gid(self) -> int:
        return self.uid


def parse_uid_range(text: str) -> range:
    """``"61000-61999"`` as ``range(61000, 62000)``; never root or a uid below 1000 (system users)."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text or "")
    if match is None:
        raise BadInputError(f'setting job_uids must look like "61000-61999", got {text!r}')
    low, high = int(match.group(1)), int(match.group(2))
    if not 1000 <= low <= high < 2**31 - 1:
        raise BadInputError(f"setting job_uids {text!r}: the range must lie within 1000-2147483646")
    return range(low, high + 1)


def job_uids(settings: Settings) -> range | None:
    """The uids jobs are given, or None when this worker cannot switch users (it is not root)."""
    if os.geteuid() != 0:
        return None
    return parse_uid_range(settings.job_uids)


def secure_data_dir(settings: Settings) -> None:
    """Close the data directory to jobs: pass-through only where a job must pass, nothing elsewhere.

    Run by a root worker at start. Files the root worker made for the API (the job store, the queue) are
    given to the data directory's owner, who runs the API.
    """
    owner = settings.data_dir.stat()
    for directory in (settings.data_dir, settings.jobs_dir):
        mode = stat.S_IMODE(directory.stat().st_mode)
        directory.chmod((mode & ~NO_ACCESS_FOR_OTHERS) | PASS_THROUGH_ONLY)
    for path in (settings.uploads_dir, settings.model_repository, settings.jobs_dir / ".incoming"):
        if path.exists():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~NO_ACCESS_FOR_OTHERS)
    for path in settings.data_dir.glob("*.db*"):
        if path.is_file() and not path.is_symlink():
            os.chown(path, owner.st_uid, owner.st_gid)
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~NO_ACCESS_FOR_OTHERS)


def open_job_dir(job: JobDir, identity: JobIdentity | None, jobs_dir: Path) -> None:
    """Let the job in: its directory's group becomes its gid, ``work/`` (and its HOME and TMPDIR) its own.

    Whatever an earlier holder of the same uid left (processes, grants on directories, temporary files) is
    swept first, in case its worker died before it could clean up.
    """
    job.work.mkdir(exist_ok=True)
    for directory in (job.tmp, job.matplotlib):
        directory.mkdir(exist_ok=True)
    if identity is None:
        return
    kill_processes_of(identity.uid)
    revoke_stale_grants(jobs_dir, identity.gid, keep=job.root)
    remove_temporary_leftovers(identity.uid)
    # work/ is readable by others: the API (the directory's owner, maybe not root) follows the progress file
    # there, and no other job can pass the directory above it. Its caches stay the job's own.
    for directory, mode in ((job.work, 0o755), (job.tmp, 0o700), (job.matplotlib, 0o700)):
        os.chown(directory, identity.uid, identity.gid)
        directory.chmod(mode)
    os.chown(job.root, -1, identity.gid)
    job.root.chmod(RUNNING_MODE)


def close_job_dir(job: JobDir, identity: JobIdentity | None) -> None:
    """Take everything back from a job that ended: its processes, ``work/``, and its pass to the directory."""
    if identity is None:
        return
    kill_processes_of(identity.uid)
    owner = job.root.stat()
    hand_over(job.work, owner.st_uid, owner.st_gid)
    os.chown(job.root, -1, owner.st_gid if owner.st_gid != identity.gid else _owner_gid(owner.st_uid))
    job.root.chmod(PRIVATE_MODE)
    remove_temporary_leftovers(identity.uid)


def _owner_gid(uid: int) -> int:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return 0


def hand_over(tree: Path, uid: int, gid: int) -> None:
    """Give every entry of ``tree`` to ``uid:gid`` without following a link (the job made them)."""
    if not tree.is_dir() or tree.is_symlink():
        return
    os.chown(tree, uid, gid, follow_symlinks=False)
    for directory, subdirectories, files in os.walk(tree):
        for name in [*subdirectories, *files]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(Path(directory, name), uid, gid, follow_symlinks=False)


def revoke_stale_grants(jobs_dir: Path, gid: int, keep: Path) -> None:
    """Job directories still open to ``gid`` (a worker died before closing them) become private again."""
    with os.scandir(jobs_dir) as entries:
        for entry in entries:
            if entry.path == str(keep) or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                info = entry.stat(follow_symlinks=False)
                if info.st_gid == gid:
                    os.chown(entry.path, -1, _owner_gid(info.st_uid))
                    Path(entry.path).chmod(PRIVATE_MODE)


def processes_of(uid: int) -> list[int]:
    """The pids whose real, effective or saved uid is ``uid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    if uid in (int(value) for value in line.split()[1:4]):
                        pids.append(int(entry.name))
                    break
    return pids


def kill_processes_of(uid: int, attempts: int = 50) -> None:
    """SIGKILL every process of ``uid`` until none is left (a fork may race one round)."""
    for _ in range(attempts):
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_temporary_leftovers(uid: int) -> None:
    """Delete what ``uid`` left in the shared temporary directories, and in world-writable folders there.

    A job can create entries only where it may write: the sticky shared directories, world-writable folders
    inside them, and folders it made itself (removed whole). Links are removed, never followed.
    """
    for base in SHARED_TEMPORARY:
        _remove_entries_of(base, uid, depth=2)


def _remove_entries_of(directory: Path, uid: int, depth: int) -> None:
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if info.st_uid == uid:
                    if stat.S_ISDIR(info.st_mode):
                        shutil.rmtree(entry.path)  # fd-based on Linux: links inside are not followed
                    else:
                        Path(entry.path).unlink()
                elif stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH and depth > 1:
                    _remove_entries_of(Path(entry.path), uid, depth - 1)
