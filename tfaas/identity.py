"""Who is calling TFaaS: the one place that attaches the auth layer; ownership checks are in
``servicecore.auth.require_owner``.
"""

from __future__ import annotations

from flask import Flask

from tfaas.settings import Settings

PUBLIC_PATHS = ("/v2/health/live", "/v2/health/ready", "/status", "/metrics")


def public_paths(settings: Settings) -> tuple[str, ...]:
    return tuple(f"{settings.base}{path}" for path in PUBLIC_PATHS)


def install_auth(app: Flask, settings: Settings) -> None:
    """The one place where authentication (issue 6, ``servicecore.auth``) is attached to the app.

    Without an ``auth`` section TFaaS trusts its caller, which is oauth2-proxy on the same host.
    """
    if not settings.auth:
        return
    from servicecore import auth

    auth.install_auth(app, settings.auth, public_paths=public_paths(settings))
