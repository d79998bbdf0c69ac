"""Identity and access for both services: OIDC bearer tokens verified with PyJWT, groups and owner checks.

The services sit behind oauth2-proxy, but they do not trust it: every request to a protected path carries a
bearer token (``Authorization: Bearer``, or ``X-Forwarded-Access-Token`` as oauth2-proxy forwards a session's
access token), verified here against the issuer's published keys.

Verification order matters for safety: the token's ``alg`` is checked against an asymmetric allow-list before
anything else (so ``alg: none`` and HMAC tokens, including HS256 "signed" with the public key, never reach
a key lookup), and the ``iss`` claim is checked against the configured issuers before any network request
is made (so a token cannot make the service fetch keys from a URL of the attacker's choosing).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import flask
import jwt

from servicecore.errors import BadInputError
from servicecore.naming import owner_namespace, owns

log = logging.getLogger(__name__)

MODES = ("oidc", "disabled")
# Public-key algorithms only: with a shared-secret (HS*) one, whoever has the public key could forge tokens.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class AuthSettings:
    """How the services check callers. Embedded in both services' settings objects as ``auth``."""

    mode: str = "disabled"  # "oidc" in production; "disabled" for a laptop, where everyone is local_user
    issuers: tuple[str, ...] = ()  # accepted ``iss`` values; each must serve OIDC discovery
    audiences: tuple[str, ...] = ()  # a token's ``aud`` must name at least one
    groups_claims: tuple[str, ...] = ("groups", "wlcg.groups")  # INDIGO IAM issues both
    allowed_groups: tuple[str, ...] = ()  # empty: any verified user; "/cms" and "cms" are the same group
    owner_sub: str | None = None  # an appliance dedicated to one user: only this ``sub`` gets in
    username_claim: str = "preferred_username"  # names the user's namespace; ``sub`` when absent
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    clock_skew_s: int = 60
    jwks_cache_s: int = 300  # how long the discovery document and key set are reused
    jwks_refresh_cooldown_s: float = 10.0  # an unknown kid re-fetches the keys at most this often
    http_timeout_s: float = 5.0
    ca_bundle: str | None = None  # CA file for the issuer's TLS, when it is not in the system store
    public_paths: tuple[str, ...] = ()  # glob patterns answered without a token, added to the app's own
    loopback_paths: tuple[str, ...] = ()  # answered without a token only to loopback callers not proxied
    local_user: str = "local"  # the identity of every caller in "disabled" mode
    local_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BadInputError(f"auth mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        refused = [alg for alg in self.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise BadInputError(
                f"auth algorithms {refused} are refused: only public-key algorithms are accepted "
                f"({', '.join(ASYMMETRIC_ALGORITHMS)})"
            )
        if self.mode == "oidc":
            if not self.issuers:
                raise BadInputError("auth mode 'oidc' needs at least one issuer")
            if not self.audiences:
                raise BadInputError("auth mode 'oidc' needs at least one audience (the client id)")
            for issuer in self.issuers:
                _check_issuer_url(issuer)
        if self.clock_skew_s < 0 or self.clock_skew_s > 600:
            raise BadInputError(f"auth clock_skew_s must be between 0 and 600, got {self.clock_skew_s}")
        if not self.local_user:
            raise BadInputError("auth local_user must not be empty")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | AuthSettings | None) -> AuthSettings:
        """Settings from a config file's ``auth`` object (or ``$..._AUTH`` JSON); lists become tuples."""
        if data is None:
            return cls()
        if isinstance(data, AuthSettings):
            return data
        if not isinstance(data, Mapping):
            raise BadInputError(f"auth settings must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise BadInputError(f"unknown auth setting {key!r} (known: {', '.join(sorted(fields))})")
            declared = str(fields[key].type)
            if declared.startswith("tuple"):
                if isinstance(value, str):
                    value = [part.strip() for part in value.split(",") if part.strip()]
                if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                    raise BadInputError(f"auth setting {key!r} must be a list of strings, got {value!r}")
                value = tuple(value)
            elif declared in ("int", "float") and not _is_number(value):
                raise BadInputError(f"auth setting {key!r} must be a number, got {value!r}")
            elif declared.startswith("str") and value is not None and not isinstance(value, str):
                raise BadInputError(f"auth setting {key!r} must be a string, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Identity:
    """Who is calling: ``sub`` is stable at the issuer; ``username`` names the user's jobs and models."""

    sub: str
    username: str
    groups: tuple[str, ...] = ()
    issuer: str | None = None

    @property
    def namespace(self) -> str:
        """The prefix of this user's model names (``<namespace>.<name>``)."""
        return owner_namespace(self.username)


class AuthError(Exception):
    """A refused request: ``status`` is 401 (who are you?) or 403 (you may not)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class IssuerUnavailableError(Exception):
    """The issuer's discovery document or keys cannot be fetched: a token is neither accepted nor refused."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_issuer_url(issuer: str) -> None:
    parts = urllib.parse.urlsplit(issuer)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback_host(parts.hostname):
        return  # a local test issuer; keys over plain HTTP from anywhere else could be swapped in transit
    raise BadInputError(f"auth issuer {issuer!r} must be an https:// URL (http:// only for loopback)")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _normalise_group(name: str) -> str:
    # IAM's wlcg.groups are paths ("/cms/analysis"), its groups claim plain names ("cms/analysis").
    return name.strip().lstrip("/")


class _Issuer:
    """One accepted issuer: its discovery document and key set, fetched lazily and cached."""

    def __init__(self, url: str, settings: AuthSettings, context: ssl.SSLContext | None) -> None:
        self.url = url
        self._settings = settings
        self._context = context
        self._lock = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        self._fetched_at = 0.0

    def signing_key(self, token: str) -> jwt.PyJWK:
        try:
            return self._client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as err:
            raise IssuerUnavailableError(f"cannot fetch the keys of {self.url}: {err}") from None
        except jwt.PyJWKClientError as err:
            # PyJWKClient already re-fetched the key set once for an unknown kid (key rotation).
            raise AuthError(401, f"token signed with a key the issuer does not publish: {err}") from None

    def _client(self) -> jwt.PyJWKClient:
        with self._lock:
            stale = time.monotonic() - self._fetched_at > self._settings.jwks_cache_s
            if self._jwks is None or stale:
                self._jwks = jwt.PyJWKClient(
                    self._discover_jwks_uri(),
                    cache_jwk_set=True,
                    lifespan=self._settings.jwks_cache_s,
                    timeout=self._settings.http_timeout_s,
                    ssl_context=self._context,
                    cooldown_duration=self._settings.jwks_refresh_cooldown_s,
                )
                self._fetched_at = time.monotonic()
            return self._jwks

    def _discover_jwks_uri(self) -> str:
        url = self.url.rstrip("/") + DISCOVERY_PATH
        try:
            with urllib.request.urlopen(  # noqa: S310 (the URL is a configured https issuer)
                url, timeout=self._settings.http_timeout_s, context=self._context
            ) as response:
                document = json.loads(response.read(1 << 20))
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as err:
            raise IssuerUnavailableError(f"cannot read the discovery document {url}: {err}") from None
        if not isinstance(document, dict) or not _same_issuer(str(document.get("issuer", "")), self.url):
            raise IssuerUnavailableError(f"discovery document {url} names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailableError(f"discovery document {url} has no jwks_uri")
        return jwks_uri


class TokenVerifier:
    """Verifies bearer tokens against the configured issuers and authorises the caller."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        context = ssl.create_default_context(cafile=settings.ca_bundle) if settings.ca_bundle else None
        self._issuers = [_Issuer(url, settings, context) for url in settings.issuers]

    def verify(self, token: str) -> Identity:
        """The caller's identity, or ``AuthError``: 401 for a bad token, 403 for a good one not allowed in."""
        claims = self.claims(token)
        identity = self._identity(claims)
        self.authorise(identity)
        return identity

    def claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as err:
            raise AuthError(401, f"malformed bearer token: {err}") from None
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise AuthError(401, f"token algorithm {algorithm!r} is not accepted")
        issuer_claim = unverified.get("iss")
        issuer = next(
            (i for i in self._issuers if isinstance(issuer_claim, str) and _same_issuer(i.url, issuer_claim)),
            None,
        )
        if issuer is None:
            raise AuthError(401, f"token issuer {issuer_claim!r} is not accepted")
        key = issuer.signing_key(token)
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=list(self.settings.audiences),
                issuer=issuer_claim,
                leeway=self.settings.clock_skew_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, "token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "token audience is not accepted") from None
        except jwt.InvalidTokenError as err:
            raise AuthError(401, f"invalid token: {err}") from None

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError(401, "token has no subject")
        username = claims.get(self.settings.username_claim)
        if not isinstance(username, str) or not username:
            username = sub
        return Identity(sub=sub, username=username, groups=self.groups(claims), issuer=claims.get("iss"))

    def groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        found: list[str] = []
        for name in self.settings.groups_claims:
            value = _claim(claims, name)
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list):
                found.extend(_normalise_group(v) for v in value if isinstance(v, str))
        return tuple(dict.fromkeys(found))

    def authorise(self, identity: Identity) -> None:
        if self.settings.owner_sub is not None and identity.sub != self.settings.owner_sub:
            raise AuthError(403, "this appliance is reserved to its owner")
        allowed = {_normalise_group(g) for g in self.settings.allowed_groups}
        if allowed and not allowed.intersection(identity.groups):
            raise AuthError(403, f"membership of one of the groups {sorted(allowed)} is required")


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its flat name (IAM's ``wlcg.groups`` has a dot in it), else by a dotted path."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def bearer_token(request: flask.Request) -> str | None:
    """The token of ``Authorization: Bearer``, or of ``X-Forwarded-Access-Token`` (oauth2-proxy sessions)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    forwarded = request.headers.get("X-Forwarded-Access-Token", "").strip()
    return forwarded or None


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _from_loopback_directly(request: flask.Request) -> bool:
    # oauth2-proxy adds X-Forwarded-For: a proxied request is public traffic, though it arrives on loopback.
    if request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded"):
        return False
    return _is_loopback_host(request.remote_addr or "")


def install_auth(
    app: flask.Flask,
    settings: AuthSettings | Mapping[str, Any],
    public_paths: Iterable[str] = (),
    loopback_paths: Iterable[str] = (),
) -> None:
    """Check the caller of every request to ``app``; the identity is then ``current_identity()``.

    ``public_paths`` and ``loopback_paths`` are the app's own glob patterns (health, metrics); the settings
    may add more. Refusals are JSON: 401 with ``WWW-Authenticate: Bearer`` or 403, also for ``AuthError``
    raised in a view (``require_owner``).
    """
    settings = AuthSettings.from_mapping(settings)
    public = (*public_paths, *settings.public_paths)
    loopback = (*loopback_paths, *settings.loopback_paths)
    verifier = TokenVerifier(settings) if settings.mode == "oidc" else None
    if verifier is None:
        log.warning("authentication is disabled: every caller is %r", settings.local_user)
    local = Identity(sub=settings.local_user, username=settings.local_user, groups=settings.local_groups)
    app.extensions["auth"] = verifier
    app.register_error_handler(AuthError, _refusal)

    @app.before_request
    def _authenticate() -> flask.Response | None:
        path = flask.request.path
        if _matches(path, public) or (_matches(path, loopback) and _from_loopback_directly(flask.request)):
            flask.g.identity = None
            return None
        if verifier is None:
            flask.g.identity = local
            return None
        token = bearer_token(flask.request)
        try:
            if token is None:
                raise AuthError(401, "a bearer token is required (Authorization: Bearer <token>)")
            flask.g.identity = verifier.verify(token)
        except AuthError as err:
            return _refusal(err)
        except IssuerUnavailableError as err:
            log.error("token not verified: %s", err)
            return _json_error(503, "the identity provider cannot be reached; try again later")
        return None


def current_identity() -> Identity | None:
    """The verified caller of this request; None on public paths."""
    return flask.g.get("identity")


def require_owner(name: str) -> None:
    """Refuse (403) a change to ``name`` unless the verified caller owns it; no check without OIDC."""
    identity = current_identity()
    if flask.current_app.extensions.get("auth") is None or identity is None:
        return
    if not owns(identity.username, name):
        raise AuthError(
            403, f"{name!r} is not in your namespace: use names starting with '{identity.namespace}.'"
        )


def _refusal(err: AuthError) -> flask.Response:
    response = _json_error(err.status, err.message)
    if err.status == 401:
        code = "invalid_token" if "required" not in err.message else "invalid_request"
        description = err.message.replace('"', "'")
        response.headers["WWW-Authenticate"] = f'Bearer error="{code}", error_description="{description}"'
    else:
        response.headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
    return response


def _json_error(status: int, message: str) -> flask.Response:
    response = flask.jsonify({"error": message, "status": status})
    response.status_code = status
    return response


__all__ = [
    "AuthError",
    "AuthSettings",
    "Identity",
    "IssuerUnavailableError",
    "TokenVerifier",
    "bearer_token",
    "current_identity",
    "install_auth",
    "require_owner",
]
