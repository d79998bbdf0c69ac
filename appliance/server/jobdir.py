"""The layout of the data directory and of one job's directory: the one place that spells their paths.

::

    DATA_DIR/jobs.db  queue.db            the job store and huey's queue (never readable by jobs)
    DATA_DIR/uploads/<owner>/<id>/        extracted uploads (never readable by jobs)
    DATA_DIR/jobs/<id>/                   one job; 0700 to its owner, the server, except while it runs:
        inputs/                           its workflow files and upload (the job reads them, never writes),
                                          init_model/ (a warm start's bundle, the worker's copy),
                                          bundle/ (a predict job's model bundle, the worker's copy)
        work/                             the job's output directory, the only place the job may write:
            bundle/ progress.jsonl specs.json  (its HOME and TMPDIR too)
            friends/                      a predict job's friend trees and predict.json
        job.log  result.json              the worker's log (and the job's stderr), the job's stdout
        bundle/                           the bundle as the worker checked and copied it out of work/
        model.tar.gz  plots/              downloads, made by the worker from the checked bundle
        friends/  friends.tar.gz          a predict job's checked friend trees, and their download
    DATA_DIR/models/                      the model repository (TFaaS's), written by the worker only

While a job runs, its directory's group is the job's own gid (mode 0750), so the job, and no other job,
can pass through it; the worker takes that back when the job ends (``appliance.server.isolation``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance.server.settings import Settings

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PLOTS = ("roc", "loss", "residuals")  # residuals: a regression's, instead of roc
INCOMING = ".incoming"  # job and upload directories are built here, then renamed into place
# A finished, queued or foreign job directory: its owner (the server) only.
PRIVATE_MODE = 0o700
# A running job's directory: the server, and the job through its own group.
RUNNING_MODE = 0o750


def job_root(settings: Settings, job_id: str) -> Path:
    """``DATA_DIR/jobs/<id>``; a string that is not a job id never becomes a path."""
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return settings.jobs_dir / job_id


@dataclass(frozen=True)
class JobDir:
    """Every path of one job's directory, and of its staging place while the API builds it."""

    root: Path

    @classmethod
    def of(cls, settings: Settings, job_id: str) -> JobDir:
        return cls(job_root(settings, job_id))

    @classmethod
    def staging(cls, settings: Settings, job_id: str) -> JobDir:
        """Where the API builds a job directory before renaming it to ``of(settings, job_id).root``."""
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return cls(settings.jobs_dir / INCOMING / job_id)

    # -- inputs: written by the API, read by the job -----------------------------------------------------

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def upload(self) -> Path:
        return self.inputs / "upload"

    @property
    def files_list(self) -> Path:
        return self.inputs / "files.txt"

    @property
    def labels(self) -> Path:
        return self.inputs / "labels.txt"

    @property
    def params(self) -> Path:
        return self.inputs / "params.json"

    @property
    def preproc(self) -> Path:
        return self.inputs / "preproc.json"

    @property
    def init_model(self) -> Path:
        """A warm start's model bundle, copied here from the repository by the worker (never by the job)."""
        return self.inputs / "init_model"

    @property
    def model_bundle(self) -> Path:
        """A predict job's model bundle: staged by the worker, so the job never reads the repository."""
        return self.inputs / "bundle"

    def model_file(self, name: str) -> Path:
        """The job's model, ``model.py`` or ``model.json``."""
        if name not in ("model.py", "model.json"):
            raise ValueError(f"not a model file name: {name!r}")
        return self.inputs / name

    # -- work: the job's own output directory ------------------------------------------------------------

    @property
    def work(self) -> Path:
        return self.root / "work"

    WORK_BUNDLE = "bundle"
    PROGRESS = "progress.jsonl"

    @property
    def work_bundle(self) -> Path:
        """Where the job writes its bundle (the job's; the worker checks it before trusting anything)."""
        return self.work / self.WORK_BUNDLE

    @property
    def progress(self) -> Path:
        return self.work / self.PROGRESS

    WORK_FRIENDS = "friends"

    @property
    def work_friends(self) -> Path:
        """Where a predict job writes its friend trees when they go to its download."""
        return self.work / self.WORK_FRIENDS

    @property
    def specs(self) -> Path:
        return self.work / "specs.json"

    @property
    def tmp(self) -> Path:
        return self.work / "tmp"

    @property
    def matplotlib(self) -> Path:
        return self.work / ".matplotlib"

    # -- the server's part: written by the worker --------------------------------------------------------

    @property
    def log(self) -> Path:
        return self.root / "job.log"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def bundle(self) -> Path:
        """The checked copy of the job's bundle, the one that is published and archived."""
        return self.root / "bundle"

    @property
    def model_archive(self) -> Path:
        return self.root / "model.tar.gz"

    @property
    def friends(self) -> Path:
        """The checked copy of a predict job's friend trees (and its predict.json)."""
        return self.root / "friends"

    @property
    def friends_archive(self) -> Path:
        return self.root / "friends.tar.gz"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        if name not in PLOTS:
            raise ValueError(f"not a plot: {name!r}")
        return self.plots / f"{name}.png"
