"""Token verification and authorisation in servicecore.auth, against the test identity provider over HTTP."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time

import flask
import jwt
import pytest

from servicecore.auth import AuthSettings, Identity, TokenVerifier, current_identity, install_auth
from servicecore.errors import BadInputError
from tests.auth.conftest import AUDIENCE, GROUP
from tests.auth.idp import IdentityProvider, SigningKey, User
from tests.support.processes import free_port


def settings_for(idp: IdentityProvider, **overrides) -> AuthSettings:
    values = {
        "mode": "oidc",
        "issuers": (idp.issuer,),
        "audiences": (AUDIENCE,),
        "allowed_groups": (GROUP,),
        "jwks_refresh_cooldown_s": 0,
    }
    values.update(overrides)
    return AuthSettings(**values)


def make_app(settings: AuthSettings) -> flask.Flask:
    app = flask.Flask("auth-test")
    install_auth(app, settings, public_paths=("/health",), loopback_paths=("/metrics",))

    @app.get("/whoami")
    def whoami() -> dict:
        identity = current_identity()
        return {"sub": identity.sub, "username": identity.username, "groups": list(identity.groups)}

    @app.get("/health")
    def health() -> dict:
        return {"ok": current_identity() is None}

    @app.get("/metrics")
    def metrics() -> str:
        return "up 1\n"

    return app


def call(app: flask.Flask, token: str | None = None, path: str = "/whoami", **headers):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return app.test_client().get(path, headers=headers)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
def app(idp: IdentityProvider) -> flask.Flask:
    return make_app(settings_for(idp))


def test_a_valid_token_with_the_group_gives_the_identity(app, idp, alice) -> None:
    response = call(app, idp.mint(alice, AUDIENCE))
    assert response.status_code == 200
    assert response.get_json() == {"sub": alice.sub, "username": "alice", "groups": ["cms", "cms/analysis"]}


def test_no_token_is_401_json_with_a_bearer_challenge(app) -> None:
    response = call(app)
    assert response.status_code == 401
    assert "bearer token is required" in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Token abc"])
def test_other_authorization_schemes_are_401(app, header) -> None:
    assert app.test_client().get("/whoami", headers={"Authorization": header}).status_code == 401


def test_garbage_is_401(app) -> None:
    response = call(app, "not-a-jwt")
    assert response.status_code == 401
    assert "malformed" in response.get_json()["error"]


def test_alg_none_is_401(app, idp, alice) -> None:
    good = jwt.decode(idp.mint(alice, AUDIENCE), options={"verify_signature": False})
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good)}."
    response = call(app, unsigned)
    assert response.status_code == 401
    assert "'none'" in response.get_json()["error"]


def test_hs256_signed_with_the_public_key_is_401(app, idp, alice) -> None:
    claims = jwt.decode(idp.mint(alice, AUDIENCE), options={"verify_signature": False})
    # The classic key-confusion attack; PyJWT itself refuses a PEM as HMAC secret, so sign by hand.
    head = b64({"alg": "HS256", "typ": "JWT", "kid": idp.signing_key.kid})
    body = b64(claims)
    mac = hmac.new(idp.signing_key.public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    response = call(app, forged)
    assert response.status_code == 401
    assert "HS256" in response.get_json()["error"]


def test_wrong_signature_is_401(app, idp, alice) -> None:
    impostor = SigningKey(kid=idp.signing_key.kid, private=SigningKey.generate().private)
    response = call(app, idp.mint(alice, AUDIENCE, key=impostor))
    assert response.status_code == 401
    assert "signature" in response.get_json()["error"].lower()


def test_a_tampered_payload_is_401(app, idp, alice, bob) -> None:
    head, _, signature = idp.mint(alice, AUDIENCE).split(".")
    claims = jwt.decode(idp.mint(alice, AUDIENCE), options={"verify_signature": False})
    tampered = f"{head}.{b64({**claims, 'sub': bob.sub})}.{signature}"
    assert call(app, tampered).status_code == 401


def test_expired_is_401_but_within_the_clock_skew_is_accepted(app, idp, alice) -> None:
    response = call(app, idp.mint(alice, AUDIENCE, lifetime_s=-120))
    assert response.status_code == 401
    assert "expired" in response.get_json()["error"]
    assert call(app, idp.mint(alice, AUDIENCE, lifetime_s=-10)).status_code == 200


def test_not_before_in_the_future_is_401_but_small_skew_is_accepted(app, idp, alice) -> None:
    response = call(app, idp.mint(alice, AUDIENCE, not_before=time.time() + 600))
    assert response.status_code == 401
    assert "not valid yet" in response.get_json()["error"]
    assert call(app, idp.mint(alice, AUDIENCE, not_before=time.time() + 10)).status_code == 200


def test_a_wrong_issuer_is_401_and_never_contacted(app, alice) -> None:
    with IdentityProvider.running() as stranger:
        response = call(app, stranger.mint(alice, AUDIENCE))
        assert response.status_code == 401
        assert "issuer" in response.get_json()["error"]
        assert stranger.requests == []


def test_a_token_claiming_our_issuer_but_signed_elsewhere_is_401(app, idp, alice) -> None:
    with IdentityProvider.running() as stranger:
        assert call(app, stranger.mint(alice, AUDIENCE, issuer=idp.issuer)).status_code == 401


@pytest.mark.parametrize("audience", ["someone-else", None, ["other", "another"]])
def test_a_wrong_or_missing_audience_is_401(app, idp, alice, audience) -> None:
    assert call(app, idp.mint(alice, audience)).status_code == 401


def test_one_of_several_audiences_is_enough(app, idp, alice) -> None:
    assert call(app, idp.mint(alice, ["tfaas", AUDIENCE])).status_code == 200


def test_valid_without_the_group_is_403(app, idp, eve) -> None:
    response = call(app, idp.mint(eve, AUDIENCE))
    assert response.status_code == 403
    assert "group" in response.get_json()["error"]


def test_groups_from_wlcg_groups_alone_count(idp) -> None:
    app = make_app(settings_for(idp, groups_claims=("wlcg.groups",), allowed_groups=("/cms",)))
    user = User(sub="s-wlcg", username="wlcg", groups=("cms",))
    token = idp.mint(user, AUDIENCE, extra={"groups": []})
    assert call(app, token).status_code == 200


def test_a_custom_nested_groups_claim(idp) -> None:
    app = make_app(settings_for(idp, groups_claims=("realm_access.roles",), allowed_groups=("ml",)))
    user = User(sub="s-nested", username="nested")
    assert call(app, idp.mint(user, AUDIENCE, extra={"realm_access": {"roles": ["ml"]}})).status_code == 200
    assert call(app, idp.mint(user, AUDIENCE, extra={"realm_access": {"roles": ["x"]}})).status_code == 403


def test_owner_only_appliance(idp, alice, bob) -> None:
    app = make_app(settings_for(idp, owner_sub=alice.sub))
    assert call(app, idp.mint(alice, AUDIENCE)).status_code == 200
    response = call(app, idp.mint(bob, AUDIENCE))
    assert response.status_code == 403
    assert "owner" in response.get_json()["error"]


def test_key_rotation_at_the_issuer(idp, alice) -> None:
    app = make_app(settings_for(idp))
    before = idp.mint(alice, AUDIENCE)
    assert call(app, before).status_code == 200
    idp.rotate(keep_old=True)  # graceful rollover: old and new tokens both good
    assert call(app, idp.mint(alice, AUDIENCE)).status_code == 200
    assert call(app, before).status_code == 200
    idp.rotate()  # the old keys are withdrawn
    assert call(app, idp.mint(alice, AUDIENCE)).status_code == 200
    response = call(app, before)
    assert response.status_code == 401
    assert "key" in response.get_json()["error"]


def test_keys_are_cached(idp, alice) -> None:
    app = make_app(settings_for(idp, jwks_refresh_cooldown_s=10))
    idp.requests.clear()
    for _ in range(5):
        assert call(app, idp.mint(alice, AUDIENCE)).status_code == 200
    assert idp.requests.count("GET /jwk") == 1
    assert idp.requests.count("GET /.well-known/openid-configuration") == 1


def test_unknown_kids_do_not_hammer_the_issuer(idp, alice) -> None:
    app = make_app(settings_for(idp, jwks_refresh_cooldown_s=30))
    assert call(app, idp.mint(alice, AUDIENCE)).status_code == 200
    idp.requests.clear()
    for _ in range(5):
        assert call(app, idp.mint(alice, AUDIENCE, key=SigningKey.generate())).status_code == 401
    assert idp.requests.count("GET /jwk") <= 1


def test_an_unreachable_issuer_is_503_json_not_500(alice) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with IdentityProvider.running() as idp:
        token = idp.mint(alice, AUDIENCE, issuer=dead)
    settings = AuthSettings(mode="oidc", issuers=(dead,), audiences=(AUDIENCE,), allow_any_user=True)
    app = make_app(dataclasses.replace(settings, http_timeout_s=1))
    response = call(app, token)
    assert response.status_code == 503
    assert "identity provider" in response.get_json()["error"]


def test_several_issuers(idp, alice) -> None:
    with IdentityProvider.running() as second:
        app = make_app(settings_for(idp, issuers=(idp.issuer, second.issuer + "/")))
        assert call(app, idp.mint(alice, AUDIENCE)).status_code == 200
        assert call(app, second.mint(alice, AUDIENCE)).status_code == 200


def test_forwarded_access_token_from_oauth2_proxy(app, idp, alice) -> None:
    response = app.test_client().get(
        "/whoami", headers={"X-Forwarded-Access-Token": idp.mint(alice, AUDIENCE)}
    )
    assert response.status_code == 200


def test_username_falls_back_to_sub(app, idp) -> None:
    user = User(sub="only-a-sub", username="", groups=(GROUP,))
    assert call(app, idp.mint(user, AUDIENCE)).get_json()["username"] == "only-a-sub"


def test_public_and_loopback_paths(app) -> None:
    assert call(app, path="/health").get_json() == {"ok": True}
    assert call(app, path="/metrics").status_code == 200
    # Through oauth2-proxy a request arrives from loopback too, but carries X-Forwarded-For.
    assert call(app, path="/metrics", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 401
    remote = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 401


@pytest.mark.parametrize("mode", ["local-demo", "disabled"])  # "disabled": its older name
def test_local_demo_mode_is_the_local_user(idp, mode) -> None:
    app = make_app(AuthSettings(mode=mode, local_user="me", local_groups=("cms",)))
    assert call(app).get_json() == {"sub": "me", "username": "me", "groups": ["cms"]}


def test_verifier_api(idp, alice) -> None:
    verifier = TokenVerifier(settings_for(idp))
    identity = verifier.verify(idp.mint(alice, AUDIENCE))
    assert identity == Identity(alice.sub, "alice", ("cms", "cms/analysis"), idp.issuer)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"mode": "oidc", "issuers": ["https://iam.example"], "audiences": ["x"], "algorithms": ["HS256"]},
            "HS256",
        ),
        (
            {"mode": "oidc", "issuers": ["https://iam.example"], "audiences": ["x"], "algorithms": ["none"]},
            "none",
        ),
        ({"mode": "oidc", "issuers": ["http://iam.example"], "audiences": ["x"]}, "https"),
        ({"mode": "oidc", "audiences": ["x"]}, "issuer"),
        ({"mode": "oidc", "issuers": ["https://iam.example"]}, "audience"),
        ({"mode": "ldap"}, "mode"),
        ({"isuers": []}, "unknown auth setting"),
        ({"issuers": 3}, "list of strings"),
        ({"clock_skew_s": "lots"}, "number"),
        ({"clock_skew_s": 3600}, "clock_skew_s"),
    ],
)
def test_bad_settings_are_refused_clearly(values, message) -> None:
    with pytest.raises(BadInputError, match=message):
        AuthSettings.from_mapping(values)


def test_settings_from_a_mapping() -> None:
    settings = AuthSettings.from_mapping(
        {
            "mode": "oidc",
            "issuers": "https://iam.cloud.infn.it/, https://iam-cms.example/",
            "audiences": ["mlaas"],
            "owner_sub": "abc",
        }
    )
    assert settings.issuers == ("https://iam.cloud.infn.it/", "https://iam-cms.example/")
    assert settings.audiences == ("mlaas",)
    assert settings.owner_sub == "abc"
    assert AuthSettings.from_mapping(None) == AuthSettings()


def test_model_namespaces_are_one_to_one() -> None:
    """One function names a user's models in both services; a dotted username cannot reach another's."""
    from servicecore.auth import Identity
    from servicecore.naming import model_name, owner_namespace, owns

    mario, rossi = Identity("1", "mario"), Identity("2", "mario.rossi")
    assert rossi.namespace == owner_namespace("mario.rossi") == "mario-2erossi"
    assert model_name("mario.rossi", "higgs") == "mario-2erossi.higgs"
    assert owns(rossi.username, model_name("mario.rossi", "higgs")) and not owns(
        mario.username, "mario-2erossi.higgs"
    )
    assert not owns(rossi.username, "mario.higgs") and owns(mario.username, "mario.higgs")
    assert not owns(Identity("3", "alice").username, "alicex.higgs")
    assert len({owner_namespace(u) for u in ("a.b", "a_b", "a-b", "a-2eb", "a@b")}) == 5
