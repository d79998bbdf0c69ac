"""Who is calling the MLaaS4HEP API: the one place that attaches the auth layer and names the owner.

Every job and upload belongs to the name ``current_owner`` returns; model names are built from it by
``servicecore.naming``.
"""

from __future__ import annotations

import flask
from flask import Flask, request

from appliance.server.settings import Settings
from servicecore.errors import BadInputError, UnauthorizedError

PUBLIC_PATHS = ("/hello", "/health", "/openapi.json")
MAX_OWNER_LENGTH = 256
SETTINGS_KEY = "MLAAS4HEP_SETTINGS"


def install_auth(app: Flask, settings: Settings) -> None:
    """The one place where the authentication layer (issue 6, ``servicecore.auth``) is attached to the app.

    Without an ``auth`` section the owner comes from oauth2-proxy's trusted header (see ``current_owner``).
    """
    if not settings.auth:
        return
    from servicecore import auth

    auth.install_auth(app, auth.AuthSettings.from_mapping(settings.auth), public_paths=PUBLIC_PATHS)


def current_owner() -> str:
    """Who is calling: the one function that answers it. Every job and upload belongs to this name.

    With ``auth`` settings it is the verified token's user (``servicecore.auth``). Otherwise it is the trusted
    ``X-Forwarded-User`` / ``X-Forwarded-Email`` header set by oauth2-proxy, or ``local_user``.
    """
    settings: Settings = flask.current_app.config[SETTINGS_KEY]
    owner = None
    if settings.auth:
        from servicecore.auth import current_identity

        identity = current_identity()
        owner = identity.username if identity is not None else None
        if owner is None:
            raise UnauthorizedError("this call needs an authenticated user")
    elif settings.trust_forwarded_user:
        owner = next(
            (
                value.strip()
                for header in ("X-Forwarded-User", "X-Forwarded-Email")
                if (value := request.headers.get(header, "")).strip()
            ),
            None,
        )
    owner = owner or settings.local_user
    if len(owner) > MAX_OWNER_LENGTH or not owner.isprintable():
        raise BadInputError("the user name is too long or not printable")
    return owner
