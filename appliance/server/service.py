"""``python -m appliance serve`` (the API under gunicorn) and ``python -m appliance worker`` (huey consumers).

Both read the one settings object
(``appliance.server.settings``) from ``--config``, ``MLAAS4HEP_*`` and the flags.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from appliance.server.settings import Settings
from servicecore.errors import BadInputError
from servicecore.launcher import GthreadServer, gthread_options

log = logging.getLogger(__name__)


def load_settings(args: argparse.Namespace) -> Settings:
    return Settings.load(
        getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        port=getattr(args, "port", None),
        host=getattr(args, "bind", None),
    )


def api_server(settings: Settings) -> GthreadServer:
    """The API under gunicorn; each worker builds its own app from the settings."""

    def factory() -> Any:
        from appliance.server.api import create_app

        return create_app(settings)

    options = gthread_options(settings, proc_name="mlaas4hep-api")
    return GthreadServer(factory, options)


def serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _configure_logging(settings)
    for directory in (settings.jobs_dir, settings.uploads_dir, settings.model_repository):
        directory.mkdir(parents=True, exist_ok=True)
    api_server(settings).run()
    return 0


def worker(args: argparse.Namespace) -> int:
    """Recover what a previous worker left behind, then consume jobs, ``max_concurrent_jobs`` at a time."""
    from appliance.server.housekeeping import start_sweeper
    from appliance.server.isolation import job_uids, secure_data_dir
    from appliance.server.network import parse_endpoints
    from appliance.server.queue import JobQueue

    settings = load_settings(args)
    _configure_logging(settings)
    uids = job_uids(settings)  # a malformed range fails here, with a clear message
    parse_endpoints(settings.job_network_allow)
    if settings.job_network not in ("isolated", "host"):
        raise BadInputError(f'setting job_network must be "isolated" or "host", got {settings.job_network!r}')
    for directory in (settings.jobs_dir, settings.uploads_dir, settings.model_repository):
        directory.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(settings)
    if uids is None:
        log.warning("not root: jobs run as the worker's own user, without their own uids or network")
    else:
        secure_data_dir(settings)
        log.info("jobs run as uids %d-%d, network %s", uids[0], uids[-1], settings.job_network)
    refusal = queue.version_refusal()
    if refusal is not None:
        log.error("this worker takes no job: %s", refusal)
    recovered = queue.recover()
    if recovered["failed"] or recovered["requeued"]:
        log.warning("recovered after restart: failed %s, queued again %s", recovered["failed"],
                    recovered["requeued"])  # fmt: skip
    consumer = queue.huey.create_consumer(
        workers=settings.max_concurrent_jobs, worker_type="thread", periodic=False, check_worker_health=True
    )
    stop_beating = threading.Event()
    beats = queue.start_heartbeats(stop_beating)
    if start_sweeper(settings, queue.store, stop_beating) is not None:
        kept = (settings.job_retention_days, settings.upload_retention_days)
        log.info("housekeeping: jobs kept %g days, uploads %g days (0 = for ever)", *kept)
    if settings.replica_urls:
        from appliance.server.delivery import Deliverer

        Deliverer(settings, queue.store).start(stop_beating)
        log.info("models go to the TFaaS replicas %s", ", ".join(settings.replica_urls))
    try:
        consumer.run()
    finally:
        stop_beating.set()
        beats.join(settings.heartbeat_s + 5)
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
