"""Who is calling TFaaS: the one place that attaches the auth layer; ownership checks are in
``servicecore.auth.require_owner``, enforced in every mode.
"""

from __future__ import annotations

from flask import Flask

from servicecore import auth
from tfaas.settings import Settings

PUBLIC_PATHS = ("/v2/health/live", "/v2/health/ready", "/status", "/metrics")


def public_paths(settings: Settings) -> tuple[str, ...]:
    return tuple(f"{settings.base}{path}" for path in PUBLIC_PATHS)


def install_auth(app: Flask, settings: Settings) -> None:
    """Attach ``servicecore.auth`` with TFaaS's public paths (under its URL prefix)."""
    auth.install_auth(app, settings.auth_settings, public_paths=public_paths(settings))
