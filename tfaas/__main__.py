"""``python -m tfaas --model-dir DIR --port N [--config FILE]``: serve the model repository under gunicorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from servicecore.errors import BadInputError
from servicecore.launcher import GthreadServer, gthread_options
from tfaas.settings import MULTIPROC_ENV, Settings

# One BLAS/OpenMP thread per worker: gunicorn's worker processes are the parallelism, and idle BLAS threads
# spinning beside the request threads cost more than they give on small models.
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tfaas_server(settings: Settings) -> GthreadServer:
    """TFaaS under gunicorn; each worker builds its own app from the settings."""

    def factory() -> Any:
        from tfaas.api import create_app

        return create_app(settings)

    extra: dict[str, Any] = {
        "child_exit": _child_exit,
        "post_worker_init": _serve_when_loaded,
        "pre_request": _connection_cap(settings.connection_max_requests),
    }
    if settings.tls_cert:
        extra["certfile"], extra["keyfile"] = settings.tls_cert, settings.tls_key
    options = gthread_options(settings, proc_name="tfaas", **extra)
    return GthreadServer(factory, options)


def _serve_when_loaded(worker: Any) -> None:
    """A worker accepts connections only once its models are loaded (gunicorn's ``post_worker_init``).

    The app's preload thread loads them; meanwhile this worker is not in the accept loop, so a replacement for
    a killed worker never takes a request it would answer slowly, and the other workers take them all. The
    heartbeat keeps the master from taking a long load for a hung worker.
    """
    plane = worker.wsgi.extensions["tfaas"]
    while not plane.store.ready.wait(1.0):
        worker.notify()


def _connection_cap(max_requests: int) -> Callable[[Any, Any], None]:
    """gunicorn's ``pre_request``: answer a kept-alive connection's ``max_requests``-th request with
    ``Connection: close``.

    The workers share one listening socket, and a client's kept-alive connection stays with the worker that
    accepted it. When a worker dies, its clients reconnect to the survivors, which then hold every connection:
    the replacement would get none until clients reconnect. Closing each connection after a number of
    requests (about 2 s of a busy client here) spreads them over the workers again, the replacement included,
    at the cost of one loopback handshake per ``max_requests`` requests. 0 switches it off.
    """

    def pre_request(worker: Any, request: Any) -> None:
        if max_requests and request.req_number >= max_requests:
            request.must_close = True

    return pre_request


def _import_tensorflow() -> None:
    """Import TensorFlow in the master before it forks, so that a worker (a replacement above all) skips the
    seconds of the import. Only the import: no TensorFlow op runs in the master, so the children's runtime
    starts fresh after the fork."""
    import tensorflow  # noqa: F401

    import tfaas.api  # noqa: F401


def _child_exit(server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tfaas", description=__doc__)
    parser.add_argument("--model-dir", type=Path, help="the model repository (config: modelDir / model_dir)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8083)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--config", type=Path, help="JSON config; the original server's keys are accepted")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, help="threads per worker")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.load(
            args.config,
            model_dir=args.model_dir,
            port=args.port,
            host=args.host,
            workers=args.workers,
            threads=args.threads,
        )
        settings.model_dir.mkdir(parents=True, exist_ok=True)
    except (BadInputError, OSError) as err:
        print(f"tfaas: {err}", file=sys.stderr)
        return 2
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    own_metrics_dir = settings.metrics_dir is None
    metrics_dir = Path(tempfile.mkdtemp(prefix="tfaas-metrics-")) if own_metrics_dir else settings.metrics_dir
    if not own_metrics_dir:
        # Values of a previous run's dead workers must not be added to this run's.
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    if settings.preimport:
        _import_tensorflow()
    try:
        tfaas_server(settings).run()
    finally:
        if own_metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
