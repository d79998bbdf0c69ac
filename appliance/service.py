"""``python -m appliance serve`` (the API under gunicorn) and ``python -m appliance worker`` (huey consumers).

Both read the one settings object (``appliance.settings``) from ``--config``, ``MLAAS4HEP_*`` and the flags.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from appliance.settings import Settings

log = logging.getLogger(__name__)


def load_settings(args: argparse.Namespace) -> Settings:
    return Settings.load(
        getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        port=getattr(args, "port", None),
        host=getattr(args, "bind", None),
    )


class ApiServer(BaseApplication):
    """gunicorn with the gthread worker, configured from :class:`Settings`; each worker builds its own app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": "gthread",
            "threads": s.threads,
            "timeout": s.timeout_s,
            "graceful_timeout": 10,
            "keepalive": 5,
            "loglevel": s.log_level,
            "proc_name": "mlaas4hep-api",
            # The default control socket is one path per user: a second server would take it over.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from appliance.api import create_app

        return create_app(self.settings)


def serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _configure_logging(settings)
    for directory in (settings.jobs_dir, settings.uploads_dir, settings.model_repository):
        directory.mkdir(parents=True, exist_ok=True)
    ApiServer(settings).run()
    return 0


def worker(args: argparse.Namespace) -> int:
    """Recover what a previous worker left behind, then consume jobs, ``max_concurrent_jobs`` at a time."""
    from appliance.jobs import JobQueue, job_user

    settings = load_settings(args)
    _configure_logging(settings)
    user = job_user(settings)  # fails early, with a clear message, when the job user is missing
    log.info("jobs run as %s", user.name if user else "the worker's own user")
    settings.model_repository.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(settings)
    recovered = queue.recover()
    if recovered["failed"] or recovered["requeued"]:
        log.warning("recovered after restart: failed %s, queued again %s", recovered["failed"],
                    recovered["requeued"])  # fmt: skip
    consumer = queue.huey.create_consumer(
        workers=settings.max_concurrent_jobs, worker_type="thread", periodic=False, check_worker_health=True
    )
    consumer.run()
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
