"""Checking an uploaded bundle in a child process, so that the check never holds the request worker's GIL.

Loading a SavedModel, freezing its graph and checking the NumPy engine against TensorFlow take seconds,
mostly holding the GIL: done in the request thread, the other requests of that gunicorn worker waited (up to
2.5 s in the soak). The check runs instead in a child process, forked from multiprocessing's fork server,
which imports TensorFlow once (a gunicorn worker, with TensorFlow's threads running, must not fork itself).
The child loads and warms up the model as the store would serve it, checks its feature spec and hands back
the model without its TensorFlow parts: for a model the NumPy engine runs (with ``tf_threads`` 1, where
TensorFlow is never called), its compiled graph, so the worker serves the upload without loading it at all;
for any other model only the verdict, and the worker loads it as a request would. The child exits after one
check, so whatever TensorFlow allocated goes with it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from servicecore.errors import BadInputError, ServiceError
from tfaas.engine import first_line
from tfaas.predictor import LoadedModel, load_warmed
from tfaas.repository import Bundle

# What the fork server imports before it forks a checker: TensorFlow's import costs seconds of CPU, paid
# once per worker (at its first upload) instead of once per upload.
PRELOAD = ["tensorflow", "tfaas.predictor"]
# A check that has not answered in this long is stuck, not slow: on the shared 2-core machine at load 18 the
# first check of a worker (the fork server's TensorFlow import included) took 73 s, so the bound is generous
# and a valid upload is not refused because the host is busy.
CHECK_TIMEOUT_S = 600.0
_preload_set = threading.Lock()


def check_in_child(bundle: Bundle, numpy_engine: bool, tf_threads: int, timeout_s: float) -> LoadedModel:
    """Load and check ``bundle`` in a child process; BadInputError names what is wrong with it.

    Returns the model as the child built it, with no function to run it (``run`` refuses): the caller
    serves it through ``ModelStore.install_checked``, which uses its ``graph`` or loads the model itself.
    """
    context = multiprocessing.get_context("forkserver")
    with _preload_set:
        context.set_forkserver_preload(PRELOAD)  # effective when the fork server starts, the first time
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_check,
        args=(sender, bundle, numpy_engine, tf_threads),
        name=f"tfaas-check-{bundle.name}",
        daemon=True,
    )
    process.start()
    sender.close()  # the child holds the only writing end: a child that dies is an EOF here
    try:
        if not receiver.poll(timeout_s):  # waits without the GIL
            raise BadInputError(f"checking model {bundle.name!r} took longer than {timeout_s:g} s")
        verdict, value = receiver.recv()
    except EOFError:
        process.join(10)
        raise BadInputError(
            f"model {bundle.name!r} cannot be served: the process loading it died "
            f"(exit code {process.exitcode})"
        ) from None
    finally:
        receiver.close()
        if process.is_alive():
            process.join(10)  # it exits once its answer is read
        if process.is_alive():
            process.kill()
            process.join(10)
    if verdict != "ok":
        raise BadInputError(value)
    return value


def _check(sender: Connection, bundle: Bundle, numpy_engine: bool, tf_threads: int) -> None:
    """In the child: the verdict on ``bundle`` and the model without its TensorFlow parts."""
    try:
        model = load_warmed(bundle, numpy_engine, tf_threads)
        _ = model.features  # raises if the spec is malformed or does not fit the model
        graph = model.graph if tf_threads == 1 else None  # otherwise large batches need TensorFlow
        answer: tuple[str, Any] = (
            "ok",
            dataclasses.replace(model, run=_not_in_this_process, graph=graph, batcher=None, _features=None),
        )
    except ServiceError as err:
        answer = ("refused", err.message)
    except Exception as err:  # a bundle that breaks its loader is bad input, not a server error
        answer = ("refused", f"model {bundle.name!r} cannot be served: {first_line(err)}")
    sender.send(answer)
    sender.close()


def _not_in_this_process(matrix: np.ndarray) -> np.ndarray:
    raise RuntimeError("this model was checked in another process: serve it with ModelStore.install_checked")
