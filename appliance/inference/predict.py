"""``mlaas4hep predict``: a model bundle applied to every event of a list of ROOT files, in parallel on Dask.

The work is split into tasks on an existing engine, Dask: a local cluster of a few worker threads by
default, or the workers of a running scheduler (``--scheduler tcp://...``), which get the bundle's bytes
rather than its path and talk to this process only through the scheduler. Tasks check each file, then score
entry ranges of at most ``task_entries`` events; this process gathers each file's ranges in order and writes
its friend tree (``appliance.inference.friends``). Nothing appears at the destination until every file is
scored: friend trees are written in a staging directory and renamed (or copied through XRootD and renamed)
only at the end, and nothing is left behind on an error.

The one call for a job runner is :func:`run_predict` (files, bundle directory, output, options) -> summary.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.inference import friends
from appliance.inference.bundle import ModelBundle, load_bundle
from appliance.inference.scoring import (
    BundleRef,
    FileCheck,
    check_file,
    model_outputs,
    score_range,
    ship_bundle,
)
from servicecore import atomic
from servicecore.errors import BadInputError

log = logging.getLogger(__name__)

MANIFEST = "predict.json"
Progress = Callable[[dict[str, Any]], None]


@dataclass
class PredictOptions:
    scheduler: str | None = None  # address of a running Dask scheduler; None starts a local cluster
    workers: int = 2  # workers of the local cluster (2 cores on a small VM)
    task_entries: int = 500_000  # entries per task: big files are split into ranges of this size
    step: int = 50_000  # entries per read inside a task (memory per worker is bounded by it)
    tree: str | None = None  # tree or RNTuple to read; default: the one the model was trained on
    # Local cluster of worker threads in this process by default: reading, the transform and TensorFlow run
    # outside the GIL, and each worker process would pay its own start and TensorFlow import (seconds per
    # call; bench/results/predict.md). Processes isolate workers, for a long run on a large machine.
    processes: bool = False

    def check(self) -> None:
        for key in ("workers", "task_entries", "step"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInputError(f"predict option {key} must be a positive integer, got {value!r}")


def run_predict(
    files: Sequence[str],
    bundle_dir: str | Path,
    output: str | Path,
    options: PredictOptions | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write one friend tree per input file into ``output`` (a directory, or a ``root://`` directory URL).

    Returns the summary also written as ``output/predict.json``: the model, and per file its input URL,
    friend tree, entries and entries passing the cuts.
    """
    options = options or PredictOptions()
    options.check()
    report = progress or (lambda event: None)
    started = time.monotonic()
    if not files:
        raise BadInputError("predict: the files list names no file")
    bundle = load_bundle(bundle_dir)
    tree = options.tree or bundle.tree
    destination = friends.Destination.parse(str(output))
    names = friends.friend_names(files)
    destination.refuse_existing([*names, MANIFEST])

    with dask_client(options) as client:
        checks = client.gather(
            client.map(check_file, files, tree_name=tree, needed=bundle.needed_branches(), pure=False)
        )
        refuse_missing(bundle, checks)
        model = _bundle_for_workers(client, bundle, options)
        n_outputs = int(client.submit(model_outputs, model, pure=False).result())
        score_names = bundle.score_names(n_outputs)
        total = sum(check.entries for check in checks)
        report({"stage": "predict", "files": len(files), "events": total, "done": 0, "events_read": 0})
        with destination.staging() as staging:
            results, done = [], 0
            jobs = [
                (check.url, start, min(start + options.task_entries, check.entries))
                for check in checks
                for start in range(0, check.entries, options.task_entries)
            ]
            scored = _Window(client, jobs, model, tree, options.step, _window_size(client))
            for check, name in zip(checks, names, strict=True):
                n_ranges = -(-check.entries // options.task_entries)
                written = friends.write_friend(
                    staging / name, check.entries, score_names, scored.take(n_ranges)
                )
                done += written["entries"]
                report(
                    {
                        "stage": "predict",
                        "files": len(files),
                        "events": total,
                        "done": done,
                        "events_read": done,
                    }
                )
                results.append({"input": check.url, "friend": name, **written})
            summary = {
                "model": bundle.name,
                "version": bundle.version,
                "bundle": str(bundle.path),
                "tree": tree,
                "friend_tree": friends.FRIEND_TREE,
                "branches": ["entry", "passed", *score_names],
                "output": str(output),
                "files": results,
                "events": done,
                "passed": sum(r["passed"] for r in results),
                "seconds": round(time.monotonic() - started, 3),
                "engine": {
                    "scheduler": options.scheduler or "local",
                    "bundle": "shipped" if options.scheduler else "path",
                    **_engine(client),
                },
                "options": asdict(options),
            }
            summary["events_per_s"] = round(done / summary["seconds"], 1) if summary["seconds"] else None
            atomic.write_json(staging / MANIFEST, summary)
            destination.commit(staging, [*names, MANIFEST])
    report({"stage": "done", "events": done})
    return summary


class _Window:
    """Scoring tasks over all files, submitted a few ahead of the one being written and taken in order.

    Every worker stays busy across file boundaries (one small file per task would otherwise run one at a
    time), while results not yet written stay bounded by the window rather than by the data set.
    """

    def __init__(
        self, client: Any, jobs: list[tuple[str, int, int]], bundle: Any, tree: str, step: int, size: int
    ) -> None:
        self.client, self.bundle, self.tree, self.step = client, bundle, tree, step
        self.pending = iter(jobs)
        self.futures: collections.deque[Any] = collections.deque()
        for _ in range(size):
            self._submit_next()

    def _submit_next(self) -> None:
        job = next(self.pending, None)
        if job is not None:
            url, start, stop = job
            self.futures.append(
                self.client.submit(
                    score_range, self.bundle, url, self.tree, start, stop, self.step, pure=False
                )
            )

    def take(self, count: int) -> Iterator[Any]:
        for _ in range(count):
            future = self.futures.popleft()
            self._submit_next()
            yield future.result()


def _bundle_for_workers(client: Any, bundle: ModelBundle, options: PredictOptions) -> BundleRef | Any:
    """What tasks get as the bundle: its path for a local cluster (the workers are this process or its
    children); for a scheduler's workers, which cannot read the job's files, the bundle's bytes scattered
    once to every worker (through the scheduler), each task then getting the same future."""
    if not options.scheduler:
        return str(bundle.path)
    return client.scatter(ship_bundle(bundle.path), broadcast=True, hash=False)


def _window_size(client: Any) -> int:
    """Two tasks per worker thread in flight: one running, one queued behind it."""
    return max(4, 2 * _engine(client)["threads"])


def _engine(client: Any) -> dict[str, Any]:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {"workers": len(workers), "threads": sum(w.get("nthreads", 0) for w in workers.values())}


def refuse_missing(bundle: ModelBundle, checks: list[FileCheck]) -> None:
    """One error naming every column the model needs and some file lacks (or holds in another form)."""
    missing = sorted({name for check in checks for name in check.missing})
    wrong = sorted({name for check in checks for name in check.wrong})
    if not missing and not wrong:
        return
    culprits = [c.url for c in checks if c.missing or c.wrong]
    where = ", ".join(map(repr, culprits[:3])) + (
        f" and {len(culprits) - 3} more" if len(culprits) > 3 else ""
    )
    parts = []
    if missing:
        parts.append(f"lack branch(es) {', '.join(missing)}")
    if wrong:
        parts.append(f"hold branch(es) of another type than the training's: {', '.join(wrong)}")
    raise BadInputError(f"model {bundle.name!r} needs what file(s) {where} {' and '.join(parts)}")


@contextlib.contextmanager
def dask_client(options: PredictOptions) -> Iterator[Any]:
    """A Dask client on the given scheduler, or on a local cluster started (and stopped) here."""
    from distributed import Client, LocalCluster

    if options.scheduler:
        try:
            # Everything goes through the scheduler (scatter, results): a job's network namespace then needs
            # to reach the scheduler's address only, not the workers' (appliance.server.network).
            client = Client(options.scheduler, timeout="10s", direct_to_workers=False)
        except (OSError, TimeoutError) as err:
            raise BadInputError(f"cannot reach the Dask scheduler {options.scheduler!r}: {err}") from None
        with client:
            yield client
        return
    extra: dict[str, Any] = {}
    if options.processes:
        # One TensorFlow thread pool per worker process, so that N workers use N cores, not N squared.
        extra["env"] = {
            "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
    with (
        LocalCluster(
            n_workers=options.workers,
            threads_per_worker=1,
            processes=options.processes,
            dashboard_address=None,
            # The scheduler serves a small HTTP API even without a dashboard: on loopback, on a free port
            # (8787 may be taken, and nothing of a user's run should listen beyond this machine).
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,  # task errors reach the caller as exceptions
            **extra,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def predict_from_cli(args: Any) -> dict[str, Any]:
    """``mlaas4hep predict``: the arguments of appliance.cli turned into one :func:`run_predict` call.

    ``--progress-file`` gets one JSON line per progress event, and a ``failed`` event naming the culprit of
    bad input (the job worker follows it, as for training). SIGTERM (a cancelled or timed-out job) becomes
    KeyboardInterrupt, so that the staging directory is removed and no partial friend tree is left.
    """
    from appliance.data.workflow import read_files_list
    from appliance.inference.bundle import resolve_bundle
    from appliance.training.command import job_command

    with job_command(getattr(args, "progress_file", None)) as report:
        files = read_files_list(args.files, args.redirector or "")
        bundle = resolve_bundle(args.model, args.models_dir, args.bundle)
        options = PredictOptions(
            scheduler=args.scheduler,
            workers=args.workers,
            task_entries=args.task_entries,
            step=args.step,
            tree=args.tree,
            processes=args.processes,
        )
        summary = run_predict(files, bundle, args.fout, options, progress=report)
    return {
        key: summary[key]
        for key in ("model", "version", "output", "events", "passed", "events_per_s", "engine")
    } | {"files": len(summary["files"])}
