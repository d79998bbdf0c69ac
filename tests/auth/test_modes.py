"""The identity modes and the access policy of servicecore.auth: which mode a bind address gets, the demo
modes fenced to loopback, the settings that would open a service refused, and owners in the demo modes."""

from __future__ import annotations

import flask
import pytest

from servicecore.auth import AuthSettings, current_identity, install_auth, require_owner
from servicecore.errors import BadInputError

ISSUER = "https://iam.example/"
OIDC = {"mode": "oidc", "issuers": [ISSUER], "audiences": ["mlaas4hep"]}
LOOPBACK = ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"]
BEYOND = ["0.0.0.0", "", "::", "192.0.2.10", "appliance.example.org"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_unset_mode_on_loopback_is_the_header_demo(host) -> None:
    assert AuthSettings().for_bind(host).mode == "trusted-header-demo"
    assert AuthSettings().for_bind(host, loopback_default="local-demo").mode == "local-demo"


@pytest.mark.parametrize("host", BEYOND)
def test_unset_mode_beyond_loopback_is_oidc(host) -> None:
    with pytest.raises(BadInputError, match=r"auth\.issuers.*not a loopback address"):
        AuthSettings().for_bind(host)
    policy = {**OIDC, "allowed_groups": ["cms"]}
    assert (
        AuthSettings.from_mapping({k: v for k, v in policy.items() if k != "mode"}).for_bind(host).mode
        == "oidc"
    )


@pytest.mark.parametrize("mode", ["local-demo", "trusted-header-demo", "disabled"])
@pytest.mark.parametrize("host", BEYOND)
def test_demo_modes_are_refused_beyond_loopback(mode, host) -> None:
    with pytest.raises(BadInputError, match=r"setting auth\.mode: .* is a demo mode"):
        AuthSettings(mode=mode).for_bind(host)


@pytest.mark.parametrize("mode", ["local-demo", "trusted-header-demo", "disabled"])
def test_demo_modes_on_loopback(mode) -> None:
    settings = AuthSettings(mode=mode).for_bind("127.0.0.1")
    assert settings.is_demo and settings.mode == ("local-demo" if mode == "disabled" else mode)


def test_oidc_without_a_policy_would_open_the_service() -> None:
    with pytest.raises(BadInputError, match=r"auth\.owner_sub / auth\.allowed_groups.*allow_any_user"):
        AuthSettings.from_mapping(OIDC)
    assert AuthSettings.from_mapping({**OIDC, "owner_sub": "a1b2"}).owner_sub == "a1b2"
    assert AuthSettings.from_mapping({**OIDC, "allowed_groups": ["cms"]}).allowed_groups == ("cms",)
    assert AuthSettings.from_mapping({**OIDC, "allow_any_user": True}).allow_any_user
    with pytest.raises(BadInputError, match=r"auth\.owner_sub must not be empty"):
        AuthSettings.from_mapping({**OIDC, "owner_sub": " "})


def test_an_undecided_mode_is_not_installed() -> None:
    with pytest.raises(BadInputError, match="undecided"):
        install_auth(flask.Flask("undecided"), AuthSettings())


def demo_app(settings: AuthSettings) -> flask.testing.FlaskClient:
    app = flask.Flask("demo")
    install_auth(app, settings, public_paths=("/health",))

    @app.get("/whoami")
    def whoami() -> dict:
        identity = current_identity()
        return {"username": identity.username}

    @app.get("/health")
    def health() -> dict:
        return {"anonymous": current_identity() is None}

    @app.delete("/models/<name>")
    def delete(name: str) -> dict:
        require_owner(name)
        return {"deleted": name}

    return app.test_client()


def test_header_demo_takes_the_proxys_user() -> None:
    client = demo_app(AuthSettings(mode="trusted-header-demo", local_user="me"))
    assert client.get("/whoami", headers={"X-Forwarded-User": "alice"}).json == {"username": "alice"}
    email = {"X-Forwarded-Email": "bob@example.org"}
    assert client.get("/whoami", headers=email).json == {"username": "bob@example.org"}
    # Someone on this host, not through the proxy: the demo user.
    assert client.get("/whoami").json == {"username": "me"}
    # Through a proxy that forgot the user header: nobody, never the demo user.
    refused = client.get("/whoami", headers={"X-Forwarded-For": "192.0.2.7"})
    assert refused.status_code == 401 and "X-Forwarded-User" in refused.json["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/whoami", headers={"X-Forwarded-User": "x" * 300}).status_code == 401
    assert client.get("/health", headers={"X-Forwarded-For": "192.0.2.7"}).json == {"anonymous": True}


def test_owner_namespaces_hold_in_the_demo_modes() -> None:
    local = demo_app(AuthSettings(mode="local-demo", local_user="me"))
    assert local.delete("/models/me.higgs").status_code == 200
    refused = local.delete("/models/alice.higgs")
    assert refused.status_code == 403 and "'me.'" in refused.json["error"]
    assert local.delete("/models/higgs").status_code == 403
    header = demo_app(AuthSettings(mode="trusted-header-demo"))
    bob = {"X-Forwarded-User": "bob"}
    assert header.delete("/models/bob.higgs", headers=bob).status_code == 200
    assert header.delete("/models/alice.higgs", headers=bob).status_code == 403
    assert header.delete("/models/local.higgs", headers=bob).status_code == 403
