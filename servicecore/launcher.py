"""gunicorn, embedded: the one launcher both services (the MLaaS4HEP API and TFaaS) run under."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gunicorn.app.base import BaseApplication


class GthreadServer(BaseApplication):
    """gunicorn with the gthread worker; each worker process builds its own app with ``factory``."""

    def __init__(self, factory: Callable[[], Any], options: Mapping[str, Any]) -> None:
        self.factory = factory
        self.options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.factory()


class ServerSettings(Protocol):
    """What the launcher reads of a service's settings (both services' Settings have these fields)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def workers(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def timeout_s(self) -> int: ...
    @property
    def log_level(self) -> str: ...


def gthread_options(settings: ServerSettings, *, proc_name: str, **extra: Any) -> dict[str, Any]:
    """gunicorn settings shared by both services, plus ``extra`` (TLS files, hooks)."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gthread",
        "threads": settings.threads,
        "timeout": settings.timeout_s,
        "graceful_timeout": 10,
        "keepalive": 5,
        "loglevel": settings.log_level,
        "proc_name": proc_name,
        # The default control socket is one path per user: a second server would take it over.
        "control_socket_disable": True,
        **extra,
    }
