"""A test OpenID Connect provider: a real HTTP server on loopback that speaks the protocol INDIGO IAM speaks.

It serves the discovery document and the JWKS, mints RS256 access tokens, and answers the OAuth2 device-code
(RFC 8628), client-credentials and refresh-token grants, plus IAM's client registration API (RFC 7592
GET/PUT) used by the oauth2_proxy role. Keys can be rotated. Tests also mint tokens directly with ``mint``,
including deliberately broken ones.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(
            kid=secrets.token_hex(8), private=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}


@dataclass
class User:
    sub: str
    username: str
    groups: tuple[str, ...] = ()


@dataclass
class Client:
    client_id: str
    secret: str
    user: User  # the identity tokens of the client-credentials grant carry (a service account)
    public: bool = False  # a public client (device flow on a laptop) has no usable secret
    registration_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    redirect_uris: list[str] = field(default_factory=list)


@dataclass
class DeviceGrant:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    audience: str | None
    expires_at: float
    user: User | None = None
    denied: bool = False


class IdentityProvider:
    """Start with ``with IdentityProvider.running() as idp:``; ``idp.issuer`` is its URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: a certificate and key file; the issuer is then https://."""
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.idp = self  # type: ignore[attr-defined]
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.issuer = f"{scheme}://{host}:{self._server.server_address[1]}"
        self.keys: list[SigningKey] = [SigningKey.generate()]
        self.clients: dict[str, Client] = {}
        self.device_grants: dict[str, DeviceGrant] = {}
        self.refresh_tokens: dict[str, tuple[str, User, str, str | None]] = {}
        self.token_lifetime_s = 3600
        self.requests: list[str] = []  # "METHOD /path" of each request served, to see who fetched what
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, tls: tuple[Path, Path] | None = None, port: int = 0) -> Iterator[IdentityProvider]:
        idp = cls(port=port, tls=tls)
        idp._thread.start()
        try:
            yield idp
        finally:
            idp._server.shutdown()
            idp._server.server_close()

    # --- what tests configure -------------------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def rotate(self, keep_old: bool = False) -> SigningKey:
        """A new signing key; the old one stays published only with ``keep_old`` (a graceful rollover)."""
        new = SigningKey.generate()
        with self._lock:
            self.keys = [new, *self.keys] if keep_old else [new]
        return new

    def add_client(self, client_id: str, secret: str, user: User, public: bool = False) -> Client:
        client = Client(client_id=client_id, secret=secret, user=user, public=public)
        self.clients[client_id] = client
        return client

    def approve(self, user_code: str, user: User) -> None:
        """What the person does in the browser at the verification URI."""
        grant = next(g for g in self.device_grants.values() if g.user_code == user_code)
        grant.user = user

    def deny(self, user_code: str) -> None:
        grant = next(g for g in self.device_grants.values() if g.user_code == user_code)
        grant.denied = True

    def mint(
        self,
        user: User,
        audience: str | list[str] | None,
        *,
        lifetime_s: int | None = None,
        not_before: float | None = None,
        issuer: str | None = None,
        key: SigningKey | None = None,
        scope: str = "openid profile wlcg.groups",
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": user.sub,
            "preferred_username": user.username,
            "iat": now,
            "exp": now + (self.token_lifetime_s if lifetime_s is None else lifetime_s),
            "jti": secrets.token_hex(8),
            "scope": scope,
            "groups": [g.lstrip("/") for g in user.groups],
            "wlcg.groups": ["/" + g.lstrip("/") for g in user.groups],
        }
        if audience is not None:
            claims["aud"] = audience
        if not_before is not None:
            claims["nbf"] = int(not_before)
        claims.update(extra or {})
        key = key or self.signing_key
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})

    # --- the protocol ---------------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwk",
            "token_endpoint": f"{self.issuer}/token",
            "device_authorization_endpoint": f"{self.issuer}/devicecode",
            "registration_endpoint": f"{self.issuer}/iam/api/client-registration",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "grant_types_supported": ["client_credentials", "refresh_token", DEVICE_GRANT],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access", "wlcg", "wlcg.groups"],
        }

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self.keys]}

    def token(self, form: dict[str, str], basic: tuple[str, str] | None) -> tuple[int, dict[str, Any]]:
        client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        client = self.clients.get(client_id)
        grant_type = form.get("grant_type")
        public_ok = client is not None and client.public and not secret
        if client is None or not (public_ok or secrets.compare_digest(secret, client.secret)):
            return 401, {"error": "invalid_client"}
        if grant_type == DEVICE_GRANT:
            return self._device_token(client, form.get("device_code", ""))
        if public_ok and grant_type != "refresh_token":
            return 401, {"error": "invalid_client", "error_description": "a public client cannot do that"}
        if grant_type == "client_credentials":
            return 200, self._issue(
                client, client.user, form.get("scope", ""), form.get("audience"), refresh=False
            )
        if grant_type == "refresh_token":
            stored = self.refresh_tokens.get(form.get("refresh_token", ""))
            if stored is None or stored[0] != client_id:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            _, user, scope, audience = stored
            return 200, self._issue(client, user, scope, audience, refresh=True)
        return 400, {"error": "unsupported_grant_type"}

    def device_authorization(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") not in self.clients:
            return 401, {"error": "invalid_client"}
        grant = DeviceGrant(
            device_code=secrets.token_urlsafe(24),
            user_code="-".join(secrets.token_hex(2).upper() for _ in range(2)),
            client_id=form["client_id"],
            scope=form.get("scope", ""),
            audience=form.get("audience"),
            expires_at=time.time() + 600,
        )
        self.device_grants[grant.device_code] = grant
        return 200, {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": f"{self.issuer}/device",
            "verification_uri_complete": f"{self.issuer}/device?user_code={grant.user_code}",
            "expires_in": 600,
            "interval": 1,
        }

    def _device_token(self, client: Client, device_code: str) -> tuple[int, dict[str, Any]]:
        grant = self.device_grants.get(device_code)
        if grant is None or grant.client_id != client.client_id:
            return 400, {"error": "invalid_grant"}
        if time.time() > grant.expires_at:
            return 400, {"error": "expired_token"}
        if grant.denied:
            return 400, {"error": "access_denied"}
        if grant.user is None:
            return 400, {"error": "authorization_pending"}
        del self.device_grants[device_code]
        return 200, self._issue(client, grant.user, grant.scope, grant.audience, refresh=True)

    def _issue(
        self, client: Client, user: User, scope: str, audience: str | None, *, refresh: bool
    ) -> dict[str, Any]:
        response: dict[str, Any] = {
            "access_token": self.mint(user, audience or client.client_id, scope=scope),
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_s,
            "scope": scope,
        }
        if refresh:
            refresh_token = secrets.token_urlsafe(24)
            self.refresh_tokens[refresh_token] = (client.client_id, user, scope, audience)
            response["refresh_token"] = refresh_token
        return response

    def registration(self, method: str, client_id: str, bearer: str | None, body: bytes) -> tuple[int, Any]:
        client = self.clients.get(client_id)
        if client is None:
            return 404, {"error": "not_found"}
        if bearer is None or not secrets.compare_digest(bearer, client.registration_token):
            return 401, {"error": "invalid_token"}
        if method == "PUT":
            document = json.loads(body)
            client.redirect_uris = list(document.get("redirect_uris", []))
        return 200, {
            "client_id": client.client_id,
            "client_secret": client.secret,
            "redirect_uris": client.redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "registration_access_token": client.registration_token,
        }


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def idp(self) -> IdentityProvider:
        return self.server.idp  # type: ignore[attr-defined]

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _bearer(self) -> str | None:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        return value if scheme.lower() == "bearer" else None

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.idp.requests.append(f"GET {path}")
        if path == "/.well-known/openid-configuration":
            self._reply(200, self.idp.discovery())
        elif path == "/jwk":
            self._reply(200, self.idp.jwks())
        elif path.startswith("/iam/api/client-registration/"):
            self._reply(*self.idp.registration("GET", path.rsplit("/", 1)[1], self._bearer(), b""))
        else:
            self._reply(404, {"error": "not_found"})

    def do_PUT(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.idp.requests.append(f"PUT {path}")
        if path.startswith("/iam/api/client-registration/"):
            self._reply(*self.idp.registration("PUT", path.rsplit("/", 1)[1], self._bearer(), self._body()))
        else:
            self._reply(404, {"error": "not_found"})

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.idp.requests.append(f"POST {path}")
        form = dict(urllib.parse.parse_qsl(self._body().decode()))
        if path == "/token":
            self._reply(*self.idp.token(form, self._basic()))
        elif path == "/devicecode":
            self._reply(*self.idp.device_authorization(form))
        else:
            self._reply(404, {"error": "not_found"})

    def _basic(self) -> tuple[str, str] | None:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(value).decode().partition(":")
        return urllib.parse.unquote(user), urllib.parse.unquote(password)


def self_signed_pair(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (also its own CA file) and its key, made with openssl."""
    cert, key = folder / "idp.crt", folder / "idp.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=IP:{host},DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
