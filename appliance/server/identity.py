"""Who is calling the MLaaS4HEP API: the one place that attaches the auth layer and names the owner.

Every job and upload belongs to the name ``current_owner`` returns; model names are built from it by
``servicecore.naming``. The identity model (modes, policy) is ``servicecore.auth``'s, shared with TFaaS.
"""

from __future__ import annotations

from flask import Flask

from appliance.server.settings import Settings
from servicecore import auth
from servicecore.errors import BadInputError, UnauthorizedError

# The web page and its files are public too (no data in them; every call they make is authenticated).
PUBLIC_PATHS = ("/hello", "/health", "/metrics", "/openapi.json", "/ui", "/ui/", "/ui/*")
SETTINGS_KEY = "MLAAS4HEP_SETTINGS"


def install_auth(app: Flask, settings: Settings) -> None:
    """Attach ``servicecore.auth`` with this API's public paths; every other path needs an identity."""
    auth.install_auth(app, settings.auth_settings, public_paths=PUBLIC_PATHS)


def current_owner() -> str:
    """Who is calling: the one function that answers it. Every job and upload belongs to this name.

    The verified token's user with ``auth.mode: oidc``; in the demo modes the demo user or oauth2-proxy's
    ``X-Forwarded-User`` (docs/auth.md).
    """
    identity = auth.current_identity()
    if identity is None:
        raise UnauthorizedError("this call needs an authenticated user")
    owner = identity.username
    if len(owner) > auth.MAX_USERNAME_LENGTH or not owner.isprintable():
        raise BadInputError("the user name is too long or not printable")
    return owner
