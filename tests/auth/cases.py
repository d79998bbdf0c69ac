"""The token cases of the access matrix, each with the status every protected endpoint must answer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt

from tests.auth.idp import IdentityProvider, SigningKey, User

AUDIENCE = "mlaas4hep"
GROUP = "cms"
# Short, so that the matrix sees a withdrawn key go out of every worker's cache.
JWKS_CACHE_S = 3
ALICE = User(sub="a1b2c3d4-alice", username="alice", groups=(GROUP,))
BOB = User(sub="e5f6a7b8-bob", username="bob", groups=(GROUP,))
EVE = User(sub="c9d0e1f2-eve", username="eve", groups=("atlas",))


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(idp: IdentityProvider) -> dict:
    return jwt.decode(idp.mint(ALICE, AUDIENCE), options={"verify_signature": False})


def alg_none(idp: IdentityProvider) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(idp))}."


def hs256_with_public_key(idp: IdentityProvider) -> str:
    head = _b64({"alg": "HS256", "typ": "JWT", "kid": idp.signing_key.kid})
    body = _b64(_claims(idp))
    mac = hmac.new(idp.signing_key.public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def wrong_signature(idp: IdentityProvider) -> str:
    impostor = SigningKey(kid=idp.signing_key.kid, private=SigningKey.generate().private)
    return idp.mint(ALICE, AUDIENCE, key=impostor)


def wrong_issuer(idp: IdentityProvider) -> str:
    with IdentityProvider.running() as stranger:
        return stranger.mint(ALICE, AUDIENCE)


# name -> (token maker or None for no token, expected status)
CASES: dict[str, tuple[Callable[[IdentityProvider], str] | None, int]] = {
    "no token": (None, 401),
    "garbage": (lambda idp: "garbage.garbage", 401),
    "alg none": (alg_none, 401),
    "HS256 signed with the public key": (hs256_with_public_key, 401),
    "wrong signature": (wrong_signature, 401),
    "expired": (lambda idp: idp.mint(ALICE, AUDIENCE, lifetime_s=-3600), 401),
    "nbf in the future": (lambda idp: idp.mint(ALICE, AUDIENCE, not_before=time.time() + 3600), 401),
    "wrong issuer": (wrong_issuer, 401),
    "wrong audience": (lambda idp: idp.mint(ALICE, "someone-else"), 401),
    "valid without the group": (lambda idp: idp.mint(EVE, AUDIENCE), 403),
    "valid with the group": (lambda idp: idp.mint(ALICE, AUDIENCE), 200),
}


def service_auth(idp: IdentityProvider) -> dict:
    """The ``auth`` settings both services get in the matrix."""
    return {
        "mode": "oidc",
        "issuers": [idp.issuer],
        "audiences": [AUDIENCE],
        "allowed_groups": [GROUP],
        "jwks_refresh_cooldown_s": 0,
        "jwks_cache_s": JWKS_CACHE_S,
    }
