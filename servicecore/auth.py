"""Identity and access for both services: OIDC bearer tokens verified with PyJWT, groups and owner checks.

One piece although above 400 lines, because the settings, the verifier and the Flask hooks are one
security decision: a reader checking what a request must carry should not have to follow it across files.

The services sit behind oauth2-proxy, but they do not trust it: every request to a protected path carries a
bearer token (``Authorization: Bearer``, or ``X-Forwarded-Access-Token`` as oauth2-proxy forwards a session's
access token), verified here against the issuer's published keys.

Verification order matters for safety: the token's ``alg`` is checked against an asymmetric allow-list before
anything else (so ``alg: none`` and HMAC tokens, including HS256 "signed" with the public key, never reach
a key lookup), and the ``iss`` claim is checked against the configured issuers before any network request
is made (so a token cannot make the service fetch keys from a URL of the attacker's choosing).

Modes (``auth.mode``): ``oidc`` verifies tokens and applies the access policy (``owner_sub``,
``allowed_groups``); the two demo modes, ``local-demo`` (every caller is ``local_user``) and
``trusted-header-demo`` (the caller is oauth2-proxy's ``X-Forwarded-User``), trust whoever can reach the
port, so they are refused unless the service binds a loopback address. Left unset (``auto``), the mode is
``oidc`` beyond loopback and ``trusted-header-demo`` on it (a bare ``serve`` on 127.0.0.1 is the local demo).
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

from servicecore.errors import BadInputError, ForbiddenError, UnauthorizedError, UnavailableError
from servicecore.http import error_response
from servicecore.naming import owner_namespace, owns
from servicecore.settings import coerce_fields

log = logging.getLogger(__name__)

OIDC = "oidc"
LOCAL_DEMO = "local-demo"
TRUSTED_HEADER_DEMO = "trusted-header-demo"
AUTO = "auto"  # decided by the bind address: see ``AuthSettings.for_bind``
DEMO_MODES = (LOCAL_DEMO, TRUSTED_HEADER_DEMO)
MODES = (AUTO, OIDC, *DEMO_MODES)
# Older names, still read from existing config files.
LEGACY_MODES = {"disabled": LOCAL_DEMO}
# oauth2-proxy's identity headers, in the order they are read (trusted-header-demo).
FORWARDED_USER_HEADERS = ("X-Forwarded-User", "X-Forwarded-Email")
MAX_USERNAME_LENGTH = 256
# Public-key algorithms only: with a shared-secret (HS*) one, whoever has the public key could forge tokens.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class AuthSettings:
    """How the services check callers. Embedded in both services' settings objects as ``auth``."""

    mode: str = AUTO  # oidc beyond loopback, trusted-header-demo on it; see the module's docstring
    issuers: tuple[str, ...] = ()  # accepted ``iss`` values; each must serve OIDC discovery
    audiences: tuple[str, ...] = ()  # a token's ``aud`` must name at least one
    groups_claims: tuple[str, ...] = ("groups", "wlcg.groups")  # INDIGO IAM issues both
    allowed_groups: tuple[str, ...] = ()  # members of any of them get in; "/cms" and "cms" are the same group
    owner_sub: str | None = None  # the launching user's ``sub``: this user gets in
    allow_any_user: bool = False  # oidc without owner_sub nor allowed_groups: every user of the issuers
    username_claim: str = "preferred_username"  # names the user's namespace; ``sub`` when absent
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    clock_skew_s: int = 60
    jwks_cache_s: int = 300  # how long the discovery document and key set are reused
    jwks_refresh_cooldown_s: float = 10.0  # an unknown kid re-fetches the keys at most this often
    http_timeout_s: float = 5.0
    ca_bundle: str | None = None  # CA file for the issuer's TLS, when it is not in the system store
    public_paths: tuple[str, ...] = ()  # glob patterns answered without a token, added to the app's own
    loopback_paths: tuple[str, ...] = ()  # answered without a token only to loopback callers not proxied
    local_user: str = "local"  # the caller in local-demo; in trusted-header-demo, a direct one with no header
    local_groups: tuple[str, ...] = ()
    # ``sub``s of service identities (the training workers' client-credentials client, docs/scaling.md) that
    # may publish into every user's namespace; only a verified token carries them, never a demo header.
    publisher_subs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode in LEGACY_MODES:
            object.__setattr__(self, "mode", LEGACY_MODES[self.mode])
        if self.mode not in MODES:
            raise BadInputError(f"setting auth.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        refused = [alg for alg in self.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise BadInputError(
                f"auth algorithms {refused} are refused: only public-key algorithms are accepted "
                f"({', '.join(ASYMMETRIC_ALGORITHMS)})"
            )
        if self.mode == OIDC:
            if not self.issuers:
                raise BadInputError("setting auth.issuers: auth mode 'oidc' needs at least one issuer")
            if not self.audiences:
                raise BadInputError(
                    "setting auth.audiences: auth mode 'oidc' needs at least one audience (the client id)"
                )
            for issuer in self.issuers:
                _check_issuer_url(issuer)
            if self.owner_sub is None and not self.allowed_groups and not self.allow_any_user:
                raise BadInputError(
                    "setting auth.owner_sub / auth.allowed_groups: with neither, every user of the issuers "
                    "could use this service; set the launching user's sub (owner_sub), the groups allowed "
                    "in (allowed_groups), or allow_any_user: true to mean it"
                )
        if self.owner_sub is not None and not self.owner_sub.strip():
            raise BadInputError("setting auth.owner_sub must not be empty (leave it out instead)")
        if self.clock_skew_s < 0 or self.clock_skew_s > 600:
            raise BadInputError(f"auth clock_skew_s must be between 0 and 600, got {self.clock_skew_s}")
        if not self.local_user:
            raise BadInputError("setting auth.local_user must not be empty")

    @property
    def is_demo(self) -> bool:
        """Whether callers are trusted without a token (``local-demo``, ``trusted-header-demo``)."""
        return self.mode in DEMO_MODES

    def for_bind(self, host: str, loopback_default: str = TRUSTED_HEADER_DEMO) -> AuthSettings:
        """These settings for a service bound to ``host``: ``auto`` decided; a demo mode off loopback refused.

        A demo mode trusts whoever reaches the port, which is safe only when that is this host (behind
        oauth2-proxy, or a laptop). Raises ``BadInputError`` naming ``auth.mode`` otherwise.
        """
        loopback = is_loopback_address(host)
        if self.mode == AUTO:
            mode = loopback_default if loopback else OIDC
            try:
                return dataclasses.replace(self, mode=mode)
            except BadInputError as err:
                raise BadInputError(
                    f"{err} (auth.mode is not set, and a service that binds {host!r}, not a loopback "
                    "address, verifies tokens: mode 'oidc')"
                ) from None
        if self.is_demo and not loopback:
            raise BadInputError(
                f"setting auth.mode: {self.mode!r} is a demo mode that trusts every caller, refused for a "
                f"service that binds {host!r}: bind 127.0.0.1 (behind oauth2-proxy) or use mode 'oidc'"
            )
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | AuthSettings | None) -> AuthSettings:
        """Settings from a config file's ``auth`` object (or ``$..._AUTH`` JSON), coerced as all settings."""
        if data is None:
            return cls()
        if isinstance(data, AuthSettings):
            return data
        return cls(**coerce_fields(cls, data, lambda _: "the auth settings", "auth", prefix="auth."))


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


class IssuerUnavailableError(UnavailableError):
    """The issuer's discovery document or keys cannot be fetched: a token is neither accepted nor refused."""


def _check_issuer_url(issuer: str) -> None:
    parts = urllib.parse.urlsplit(issuer)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_address(parts.hostname):
        return  # a local test issuer; keys over plain HTTP from anywhere else could be swapped in transit
    raise BadInputError(f"auth issuer {issuer!r} must be an https:// URL (http:// only for loopback)")


def is_loopback_address(host: str) -> bool:
    """Whether ``host`` (a bind or peer address) is this machine only; "" and 0.0.0.0 are every interface."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


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
            raise UnauthorizedError(f"token signed with a key the issuer does not publish: {err}") from None

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
        """The caller's identity; ``UnauthorizedError`` for a bad token, ``ForbiddenError`` for a good one
        outside the access policy."""
        claims = self.claims(token)
        identity = self._identity(claims)
        self.authorise(identity)
        return identity

    def claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as err:
            raise UnauthorizedError(f"malformed bearer token: {err}") from None
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise UnauthorizedError(f"token algorithm {algorithm!r} is not accepted")
        issuer_claim = unverified.get("iss")
        issuer = next(
            (i for i in self._issuers if isinstance(issuer_claim, str) and _same_issuer(i.url, issuer_claim)),
            None,
        )
        if issuer is None:
            raise UnauthorizedError(f"token issuer {issuer_claim!r} is not accepted")
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
            raise UnauthorizedError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError("token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedError("token audience is not accepted") from None
        except jwt.InvalidTokenError as err:
            raise UnauthorizedError(f"invalid token: {err}") from None

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnauthorizedError("token has no subject")
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
        if identity.sub in self.settings.publisher_subs:
            return  # a service identity, let in to publish (require_owner lets it into every namespace)
        if self.settings.owner_sub is not None and identity.sub != self.settings.owner_sub:
            raise ForbiddenError("this appliance is reserved to its owner")
        allowed = {_normalise_group(g) for g in self.settings.allowed_groups}
        if allowed and not allowed.intersection(identity.groups):
            raise ForbiddenError(f"membership of one of the groups {sorted(allowed)} is required")


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
    return is_loopback_address(request.remote_addr or "")


def forwarded_user(request: flask.Request) -> str | None:
    """oauth2-proxy's ``X-Forwarded-User``, else ``X-Forwarded-Email``: trusted in the header demo only."""
    return next(
        (
            value.strip()
            for header in FORWARDED_USER_HEADERS
            if (value := request.headers.get(header, "")).strip()
        ),
        None,
    )


def install_auth(
    app: flask.Flask,
    settings: AuthSettings | Mapping[str, Any],
    public_paths: Iterable[str] = (),
    loopback_paths: Iterable[str] = (),
) -> None:
    """Check the caller of every request to ``app``; the identity is then ``current_identity()``.

    ``settings`` must have a decided mode (``AuthSettings.for_bind``): the bind address, which decides it, is
    the service's. ``public_paths`` and ``loopback_paths`` are the app's own glob patterns (health,
    metrics); the settings may add more. Refusals are JSON: 401 with ``WWW-Authenticate: Bearer`` or 403,
    also for ``UnauthorizedError``/``ForbiddenError`` raised in a view (``require_owner``).
    """
    settings = AuthSettings.from_mapping(settings)
    if settings.mode == AUTO:
        raise BadInputError("setting auth.mode is undecided: give the settings for_bind(the bound address)")
    public = (*public_paths, *settings.public_paths)
    loopback = (*loopback_paths, *settings.loopback_paths)
    verifier = TokenVerifier(settings) if settings.mode == OIDC else None
    if settings.is_demo:
        log.warning(
            "auth mode %s: callers are trusted without a token (%s)",
            settings.mode,
            f"every caller is {settings.local_user!r}"
            if settings.mode == LOCAL_DEMO
            else "the caller is X-Forwarded-User",
        )
    local = Identity(sub=settings.local_user, username=settings.local_user, groups=settings.local_groups)
    app.extensions["auth"] = verifier
    app.extensions["auth_settings"] = settings
    app.register_error_handler(UnauthorizedError, _refusal)
    app.register_error_handler(ForbiddenError, _refusal)

    @app.before_request
    def _authenticate() -> flask.Response | None:
        request = flask.request
        path = request.path
        if _matches(path, public) or (_matches(path, loopback) and _from_loopback_directly(request)):
            flask.g.identity = None
            return None
        try:
            if verifier is None:
                flask.g.identity = _demo_identity(settings, local, request)
                return None
            token = bearer_token(request)
            if token is None:
                raise UnauthorizedError("a bearer token is required (Authorization: Bearer <token>)")
            flask.g.identity = verifier.verify(token)
        except (UnauthorizedError, ForbiddenError) as err:
            return _refusal(err)
        except IssuerUnavailableError as err:
            log.error("token not verified: %s", err)
            return error_response(503, "the identity provider cannot be reached; try again later")
        return None


def _demo_identity(settings: AuthSettings, local: Identity, request: flask.Request) -> Identity:
    if settings.mode == LOCAL_DEMO:
        return local
    name = forwarded_user(request)
    if name is None:
        if _from_loopback_directly(request):
            return local  # someone on this host, not through oauth2-proxy: the local demo user
        raise UnauthorizedError("a proxied request must carry X-Forwarded-User (trusted-header-demo)")
    if len(name) > MAX_USERNAME_LENGTH or not name.isprintable():
        raise UnauthorizedError("the X-Forwarded-User name is too long or not printable")
    return Identity(sub=name, username=name)


def current_identity() -> Identity | None:
    """The caller of this request (verified, or the demo user); None on public paths."""
    return flask.g.get("identity")


def require_owner(name: str) -> None:
    """Refuse (403) a change to ``name`` unless the caller owns it, in every mode (the demo user too)."""
    identity = current_identity()
    if identity is None:
        raise UnauthorizedError("this call needs an authenticated user")
    publishers = flask.current_app.extensions["auth_settings"].publisher_subs
    if identity.issuer is not None and identity.sub in publishers:
        return  # the workers' service identity delivers every user's models
    if not owns(identity.username, name):
        raise ForbiddenError(
            f"{name!r} is not in your namespace: use names starting with '{identity.namespace}.'"
        )


def _refusal(err: UnauthorizedError | ForbiddenError) -> flask.Response:
    """The one error body, with the ``WWW-Authenticate`` challenge RFC 6750 asks of a bearer-token server."""
    response = error_response(err.status, err.message)
    if err.status == 401:
        code = "invalid_token" if "required" not in err.message else "invalid_request"
        description = err.message.replace('"', "'")
        response.headers["WWW-Authenticate"] = f'Bearer error="{code}", error_description="{description}"'
    else:
        response.headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
    return response


__all__ = [
    "AUTO",
    "DEMO_MODES",
    "LOCAL_DEMO",
    "OIDC",
    "TRUSTED_HEADER_DEMO",
    "AuthSettings",
    "Identity",
    "IssuerUnavailableError",
    "TokenVerifier",
    "bearer_token",
    "current_identity",
    "forwarded_user",
    "install_auth",
    "is_loopback_address",
    "require_owner",
]
