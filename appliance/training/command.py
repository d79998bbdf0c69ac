"""``mlaas4hep train`` around the trainer: progress lines for a terminal, a progress file for the job worker,
and SIGTERM (a cancelled job) turned into KeyboardInterrupt so that temporary directories are removed; the
same frame (:func:`job_command`) serves ``mlaas4hep predict``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servicecore.errors import BadInputError


def now() -> str:
    """The time of a progress event."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def job_command(
    progress_path: str | Path | None, describe: Callable[[Mapping[str, Any]], str] | None = None
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """What ``mlaas4hep train`` and ``mlaas4hep predict`` share as a job's command, around their work.

    It yields ``report(event)``, which appends the event as one JSON line to ``progress_path`` (the job worker
    follows that file), stamped with the time unless it has one, and prints ``describe(event)`` when given.
    Bad input is reported as a ``failed`` event naming the culprit, then raised. Meanwhile SIGTERM (a
    cancelled or timed-out job) is KeyboardInterrupt, so that temporary directories are removed.
    """
    lock = threading.Lock()  # training reports from its reader thread as well
    progress_file = Path(progress_path).open("a", buffering=1) if progress_path else None  # noqa: SIM115

    def report(event: dict[str, Any]) -> None:
        event = {**event, "time": event.get("time") or now()}
        with lock:
            if progress_file is not None:
                progress_file.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            if describe is not None:
                print(describe(event), file=sys.stderr, flush=True)

    previous = _terminate_as_interrupt()
    try:
        yield report
    except BadInputError as err:
        report({"stage": "failed", "error": str(err)})
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if progress_file is not None:
            progress_file.close()


def train_from_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``mlaas4hep train``: train, print progress unless quiet, and append progress JSON lines to a file."""
    from appliance.training.run import run_training  # TensorFlow and the frameworks: not for predict's sake

    quiet = bool(getattr(args, "quiet", False))
    with job_command(getattr(args, "progress_file", None), None if quiet else describe_progress) as report:
        return run_training(
            files=args.files,
            labels=args.labels,
            model=args.model,
            params=args.params,
            preproc=args.preproc,
            specs=args.specs,
            fout=args.fout,
            publish=args.publish,
            name=args.name,
            progress=report,
            init_model=getattr(args, "init_model", None),
        )


def _terminate_as_interrupt() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def describe_progress(event: Mapping[str, Any]) -> str:
    """One human line per progress event, for the terminal."""
    stage = event.get("stage")
    if stage == "train" and event.get("epoch", 0) == 0:
        return f"training {event.get('parameters')} parameters on {event.get('device')}"
    if stage == "train":
        parts = [f"epoch {event['epoch']}/{event['epochs']}"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if event.get(key) is not None:
                parts.append(f"{key} {event[key]:.4f}")
        if event.get("events_per_s"):
            parts.append(f"{event['events_per_s']:.0f} events/s")
        return ("  " if event.get("partial") else "") + ", ".join(parts)
    if stage == "specs":
        if "events" in event:
            return (
                f"specs: {event['events']} events, {event['features']} features, classes {event['classes']}"
            )
        return f"specs: reading {event['files']} file(s)"
    if stage == "evaluate":
        return f"evaluating on {event['events']} test events"
    if stage == "publish":
        return f"publishing {event['name']} into {event['repository']}"
    if stage == "done":
        test = event.get("metrics") or {}
        if "rmse" in test:  # a regression
            return f"done: {event['bundle']} (test loss {test.get('loss')}, RMSE {test.get('rmse')})"
        weighted = f", weighted AUC {test['auc_weighted']}" if "auc_weighted" in test else ""
        return (
            f"done: {event['bundle']} (test loss {test.get('loss')}, accuracy {test.get('accuracy')}, "
            f"AUC {test.get('auc')}{weighted})"
        )
    return json.dumps(dict(event), default=str)
