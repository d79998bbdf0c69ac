"""``mlaas4hep train`` around the trainer: progress lines for a terminal, a progress file for the job worker,
and SIGTERM (a cancelled job) turned into KeyboardInterrupt so that temporary directories are removed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.training.run import run_training
from appliance.training.trainer import now
from servicecore.errors import BadInputError


def train_from_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``mlaas4hep train``: train, print progress unless quiet, and append progress JSON lines to a file.

    SIGTERM (a cancelled job) is turned into KeyboardInterrupt so that temporary directories are removed.
    """
    progress_path = Path(args.progress_file) if getattr(args, "progress_file", None) else None
    quiet = bool(getattr(args, "quiet", False))
    lock = threading.Lock()
    progress_file = progress_path.open("a", buffering=1) if progress_path else None

    def report(event: dict[str, Any]) -> None:
        with lock:
            if progress_file is not None:
                progress_file.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            if not quiet:
                print(describe_progress(event), file=sys.stderr, flush=True)

    previous = _terminate_as_interrupt()
    try:
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
    except BadInputError as err:
        report({"stage": "failed", "error": str(err), "time": now()})
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if progress_file is not None:
            progress_file.close()


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
