"""mlaas4hep-client's token sources and OAuth2 flows against the test identity provider over TLS."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from mlaas4hep_client import cli as client
from servicecore.auth import AuthSettings, TokenVerifier
from tests.auth.conftest import AUDIENCE
from tests.auth.idp import IdentityProvider, User, self_signed_pair


@pytest.fixture(scope="module")
def tls_idp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idp-tls")
    cert, key = self_signed_pair(folder)
    with IdentityProvider.running(tls=(cert, key)) as idp:
        idp.add_client("robot", "robot-secret", User("svc-robot", "robot", ("cms",)))
        idp.add_client("laptop", "", User("-", "-"), public=True)
        idp.add_client("laptop-confidential", "laptop-secret", User("-", "-"))
        yield idp, cert


@pytest.fixture
def verifier(tls_idp) -> TokenVerifier:
    idp, cert = tls_idp
    return TokenVerifier(
        AuthSettings(
            mode="oidc",
            issuers=(idp.issuer,),
            audiences=(AUDIENCE,),
            allow_any_user=True,
            ca_bundle=str(cert),
        )
    )


def options(tls_idp, tmp_path, **overrides) -> client.Options:
    idp, cert = tls_idp
    values = {
        "issuer": idp.issuer,
        "audience": AUDIENCE,
        "ca_bundle": str(cert),
        "cache": tmp_path / "cache" / "tokens.json",
        "environ": {},
    }
    values.update(overrides)
    return client.Options(**values)


def test_token_flag_wins(tls_idp, tmp_path) -> None:
    opts = options(tls_idp, tmp_path, token=" given \n", environ={"BEARER_TOKEN": "from-env"})
    assert client.TokenSource(opts).bearer() == "given"


def test_bearer_token_environment(tls_idp, tmp_path) -> None:
    assert client.TokenSource(options(tls_idp, tmp_path, environ={"BEARER_TOKEN": "env"})).bearer() == "env"
    token_file = tmp_path / "bt"
    token_file.write_text("from-file\n")
    source = client.TokenSource(options(tls_idp, tmp_path, environ={"BEARER_TOKEN_FILE": str(token_file)}))
    assert source.bearer() == "from-file"


def test_no_source_is_a_clear_error(tls_idp, tmp_path) -> None:
    with pytest.raises(client.ClientError, match="no token"):
        client.TokenSource(options(tls_idp, tmp_path)).bearer()


def test_oidc_agent(tls_idp, tmp_path, monkeypatch) -> None:
    idp, _ = tls_idp
    token = idp.mint(User("agent-user", "agent", ("cms",)), AUDIENCE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # oidc-agent is not installed here: a stand-in oidc-token with the same command line.
    fake = bin_dir / "oidc-token"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\n"
        f"pathlib.Path({str(tmp_path / 'argv')!r}).write_text(' '.join(sys.argv[1:]))\n"
        f"print({token!r})\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert client.TokenSource(options(tls_idp, tmp_path, oidc_agent="infncloud")).bearer() == token
    assert (tmp_path / "argv").read_text() == f"infncloud --aud={AUDIENCE}"


def test_client_credentials_token_is_accepted_by_the_services_and_cached(tls_idp, tmp_path, verifier) -> None:
    idp, _ = tls_idp
    opts = options(tls_idp, tmp_path, client_id="robot", client_secret="robot-secret")
    token = client.TokenSource(opts).bearer()
    identity = verifier.verify(token)
    assert identity.sub == "svc-robot" and "cms" in identity.groups
    before = idp.requests.count("POST /token")
    assert client.TokenSource(opts).bearer() == token  # from the cache
    assert idp.requests.count("POST /token") == before
    assert stat.S_IMODE(opts.cache.stat().st_mode) == 0o600


def test_client_credentials_with_a_wrong_secret(tls_idp, tmp_path) -> None:
    opts = options(tls_idp, tmp_path, client_id="robot", client_secret="wrong")
    with pytest.raises(client.ClientError, match="invalid_client"):
        client.TokenSource(opts).bearer()


def device_login(tls_idp, tmp_path, user: User | None, client_id: str = "laptop", **extra) -> client.Options:
    idp, _ = tls_idp
    shown: list[str] = []

    def person(message: str) -> None:
        # What the person does: read the message, open the URL, enter the code, approve (or refuse).
        shown.append(message)
        code = re.search(r"enter the code (\S+)", message).group(1)
        assert idp.issuer in message
        if user is None:
            idp.deny(code)
        else:
            idp.approve(code, user)

    opts = options(tls_idp, tmp_path, client_id=client_id, notify=person, **extra)
    opts.shown = shown  # type: ignore[attr-defined]
    return opts


@pytest.mark.parametrize(
    ("client_id", "secret"), [("laptop", None), ("laptop-confidential", "laptop-secret")]
)
def test_device_flow_then_cache_then_refresh(tls_idp, tmp_path, verifier, alice, client_id, secret) -> None:
    idp, _ = tls_idp
    opts = device_login(tls_idp, tmp_path, alice, client_id=client_id, client_secret=secret, flow="device")
    token = client.TokenSource(opts).bearer()
    assert len(opts.shown) == 1
    assert verifier.verify(token).username == "alice"

    # Cached: no second login.
    assert client.TokenSource(opts).bearer() == token
    assert len(opts.shown) == 1

    # Expired in the cache: renewed with the refresh token, again without a login.
    cache = json.loads(opts.cache.read_text())
    (entry,) = cache.values()
    entry["expires_at"] = time.time() - 1
    opts.cache.write_text(json.dumps(cache))
    refreshes = idp.requests.count("POST /token")
    renewed = client.TokenSource(opts).bearer()
    assert renewed != token
    assert verifier.verify(renewed).sub == alice.sub
    assert len(opts.shown) == 1
    assert idp.requests.count("POST /token") == refreshes + 1


def test_a_revoked_refresh_token_means_a_new_login(tls_idp, tmp_path, alice) -> None:
    idp, _ = tls_idp
    opts = device_login(tls_idp, tmp_path, alice)
    client.TokenSource(opts).bearer()
    cache = json.loads(opts.cache.read_text())
    (entry,) = cache.values()
    entry["expires_at"] = time.time() - 1
    idp.refresh_tokens.clear()
    opts.cache.write_text(json.dumps(cache))
    client.TokenSource(opts).bearer()
    assert len(opts.shown) == 2


def test_a_refused_device_login(tls_idp, tmp_path) -> None:
    with pytest.raises(client.ClientError, match="access_denied"):
        client.TokenSource(device_login(tls_idp, tmp_path, None)).bearer()
    assert not (tmp_path / "cache" / "tokens.json").exists()


def test_token_command_prints_the_token(tls_idp, tmp_path, capsys) -> None:
    idp, cert = tls_idp
    argv = [
        "--issuer", idp.issuer, "--ca-bundle", str(cert), "--cache", str(tmp_path / "t.json"),
        "--client-id", "robot", "--client-secret", "robot-secret", "token",
    ]  # fmt: skip
    assert client.main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.count(".") == 2


def test_command_errors_exit_2(tls_idp, tmp_path, capsys) -> None:
    idp, cert = tls_idp
    argv = ["--issuer", idp.issuer, "--ca-bundle", str(cert), "--cache", str(tmp_path / "t.json"), "token"]
    assert client.main(argv) == 2
    assert "no token" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("rows.json", "[[0.1, 0.2]]", {"instances": [[0.1, 0.2]]}),
        ("tfaas.json", '{"keys": ["a"], "values": [1.0], "model": "m"}', {"instances": [[1.0]]}),
        ("serving.json", '{"instances": [{"x": 1}]}', {"instances": [{"x": 1}]}),
        ("vectors.csv", "0.1,0.2\n0.3,0.4\n", {"instances": [[0.1, 0.2], [0.3, 0.4]]}),
        ("raw.csv", "Jet_pt,MET_pt\n10,20\n", {"instances": [{"Jet_pt": 10.0, "MET_pt": 20.0}]}),
    ],
)
def test_read_rows(tmp_path, name, text, expected) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert client.read_rows(path) == expected


@pytest.mark.parametrize(("name", "text"), [("x.csv", "a,b\n1\n"), ("x.json", "{"), ("x.json", '{"y": 1}')])
def test_read_rows_refuses_bad_files(tmp_path, name, text) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(client.ClientError):
        client.read_rows(Path(path))
