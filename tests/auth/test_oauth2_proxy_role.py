"""The oauth2_proxy role, run for real with ansible-playbook on this host, confined to a temporary folder.

It completes the IAM client at the test identity provider (over TLS), writes the secrets, a self-signed TLS
pair, one configuration per front and the systemd unit template. Installing the binary and starting units
are left out (no download, no systemd here). Every option of the rendered files must be an option
oauth2-proxy documents.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.auth.idp import IdentityProvider, User, self_signed_pair

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

# The config-file names oauth2-proxy documents ("toml:" column of the option tables), from
# https://github.com/oauth2-proxy/oauth2-proxy/blob/v7.15.3/docs/docs/configuration/overview.md
# (tag v7.15.3, commit 66b3a17db09f0b51a4bc3159d4c7fe3fbeca1288), the release the role installs.
DOCUMENTED_TEXT = """
    acr_values allow_query_semicolons allowed_groups api_routes approval_prompt
    auth-request-response-mode auth_logging auth_logging_format authenticated_emails_file
    backend_logout_url banner basic_auth_password bearer_token_login_fallback client_id
    client_secret client_secret_file code_challenge_method cookie_csrf_expire
    cookie_csrf_per_request cookie_csrf_per_request_limit cookie_csrf_samesite cookie_domains
    cookie_expire cookie_httponly cookie_name cookie_path cookie_refresh cookie_samesite
    cookie_secret cookie_secret_file cookie_secure custom_sign_in_logo custom_templates_dir
    disable_keep_alives display_htpasswd_form email_domains encode_state errors_to_info_log
    exclude_logging_paths extra_jwt_issuers flush_interval footer force_https force_json_errors
    gcp_healthchecks htpasswd_file htpasswd_user_groups http_address https_address
    insecure_oidc_allow_unverified_email insecure_oidc_skip_issuer_verification
    insecure_oidc_skip_nonce jwt_key jwt_key_file logging_compress logging_filename
    logging_local_time logging_max_age logging_max_backups logging_max_size login_url
    metrics_address metrics_secure_address metrics_tls_cert_file metrics_tls_key_file
    oidc_audience_claims oidc_email_claim oidc_enabled_signing_algs oidc_extra_audiences
    oidc_groups_claim oidc_issuer_url oidc_jwks_url oidc_public_key_files pass_access_token
    pass_authorization_header pass_basic_auth pass_host_header pass_user_headers ping_path
    ping_user_agent prefer_email_to_user profile_url prompt provider provider_ca_files
    provider_display_name proxy_prefix proxy_websockets pubjwk_url ready_path real_client_ip_header
    redeem_url redirect_url redis_ca_path redis_cluster_connection_urls
    redis_connection_idle_timeout redis_connection_url redis_insecure_skip_tls_verify redis_password
    redis_sentinel_connection_urls redis_sentinel_master_name redis_sentinel_password
    redis_use_cluster redis_use_sentinel relative_redirect_url request_id_header request_logging
    request_logging_format reverse_proxy scope session_cookie_minimal session_store_type
    set_authorization_header set_basic_auth set_xauthrequest show_debug_on_error signature_key
    silence_ping_logging skip_auth_preflight skip_auth_regex skip_auth_routes
    skip_auth_strip_headers skip_claims_from_profile_url skip_jwt_bearer_tokens skip_oidc_discovery
    skip_provider_button ssl_insecure_skip_verify ssl_upstream_insecure_skip_verify standard_logging
    standard_logging_format tls_cert_file tls_cipher_suites tls_key_file tls_min_version trusted_ips
    trusted_proxy_ips upstream_timeout upstreams use_system_trust_store validate_url
    whitelist_domains
"""
DOCUMENTED_OPTIONS = set(DOCUMENTED_TEXT.split())

PLAYBOOK = """
- name: Configure the oauth2-proxy fronts without installing or starting them
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the role's configuration steps
      ansible.builtin.include_role:
        name: oauth2_proxy
        tasks_from: "{{ item }}"
      loop: {steps}
"""


def run_role(
    folder: Path,
    extra: dict,
    check: bool = True,
    steps: tuple[str, ...] = ("preflight", "iam_client", "secrets", "configure"),
) -> subprocess.CompletedProcess:
    playbook = folder / "playbook.yml"
    playbook.write_text(PLAYBOOK.replace("{steps}", json.dumps(list(steps))))
    variables = folder / "vars.json"
    variables.write_text(json.dumps(extra))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(folder / ".ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook), "-e", f"@{variables}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


def recap_changed(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "changed=" in line)
    return int(line.split("changed=")[1].split()[0])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oauth2-proxy")
    cert, key = self_signed_pair(folder)
    with IdentityProvider.running(tls=(cert, key)) as idp:
        client = idp.add_client("appliance-client", "s3cret-from-iam", User("svc", "svc"))
        config_dir = folder / "etc"
        extra = {
            "oauth2_proxy_config_dir": str(config_dir),
            "oauth2_proxy_systemd_dir": str(folder),
            "oauth2_proxy_service_manage": False,
            "oauth2_proxy_group": grp.getgrgid(os.getgid()).gr_name,
            "oauth2_proxy_issuer_url": idp.issuer + "/",
            "oauth2_proxy_provider_ca_files": [str(cert)],
            "oauth2_proxy_iam_client_id": client.client_id,
            "oauth2_proxy_iam_token": client.registration_token,
            "oauth2_proxy_public_host": "192.0.2.10",
            "oauth2_proxy_allowed_groups": ["cms"],
        }
        first = run_role(folder, extra)
        secret_before = (config_dir / "cookie_secret").read_text()
        requests_before = list(idp.requests)
        second = run_role(folder, extra)
        yield {
            "idp": idp,
            "client": client,
            "config_dir": config_dir,
            "folder": folder,
            "extra": extra,
            "first": first.stdout,
            "second": second.stdout,
            "secret_before": secret_before,
            "requests_between": idp.requests[len(requests_before) :],
        }


def load(deployment, front: str) -> dict:
    return tomllib.loads((deployment["config_dir"] / f"{front}.cfg").read_text())


@pytest.mark.parametrize("front", ["mlaas4hep", "tfaas"])
def test_every_option_is_documented(deployment, front) -> None:
    options = load(deployment, front)
    undocumented = sorted(set(options) - DOCUMENTED_OPTIONS)
    assert undocumented == []
    assert len(options) > 20


def test_the_documented_list_is_the_real_one() -> None:
    # Guard against a truncated copy: options the role relies on, and a plural/singular trap.
    assert {"skip_jwt_bearer_tokens", "extra_jwt_issuers", "oidc_groups_claim", "tls_cert_file"} <= (
        DOCUMENTED_OPTIONS
    )
    assert "upstream" not in DOCUMENTED_OPTIONS and "upstreams" in DOCUMENTED_OPTIONS
    assert len(DOCUMENTED_OPTIONS) > 100


def test_fronts_ports_and_loopback_upstreams(deployment) -> None:
    mlaas, tfaas = load(deployment, "mlaas4hep"), load(deployment, "tfaas")
    assert mlaas["https_address"] == "0.0.0.0:4433"
    assert tfaas["https_address"] == "0.0.0.0:8081"
    assert mlaas["upstreams"] == ["http://127.0.0.1:8080/"]
    assert tfaas["upstreams"] == ["http://127.0.0.1:8083/"]
    assert mlaas["http_address"] == tfaas["http_address"] == ""  # no plain-HTTP listener
    assert mlaas["cookie_name"] != tfaas["cookie_name"]
    assert tfaas["api_routes"] == ["^/"] and tfaas["force_json_errors"] is True
    assert mlaas["redirect_url"] == "https://192.0.2.10:4433/oauth2/callback"


def test_oidc_client_and_bearer_tokens(deployment) -> None:
    options = load(deployment, "mlaas4hep")
    issuer = deployment["idp"].issuer + "/"
    assert options["provider"] == "oidc"
    assert options["oidc_issuer_url"] == issuer
    assert options["client_id"] == "appliance-client"
    assert options["client_secret"] == "s3cret-from-iam"  # read back from the registration API
    assert options["skip_jwt_bearer_tokens"] is True
    assert options["extra_jwt_issuers"] == [f"{issuer}=mlaas4hep"]
    assert options["oidc_groups_claim"] == "groups"
    assert options["allowed_groups"] == ["cms"]
    assert options["email_domains"] == ["*"]
    assert options["provider_ca_files"] == deployment["extra"]["oauth2_proxy_provider_ca_files"]
    assert options["pass_access_token"] is True


def test_the_iam_client_gets_the_appliance_callbacks(deployment) -> None:
    assert sorted(deployment["client"].redirect_uris) == [
        "https://192.0.2.10:4433/oauth2/callback",
        "https://192.0.2.10:8081/oauth2/callback",
    ]


def test_tls_pair_is_generated_for_the_public_host(deployment) -> None:
    options = load(deployment, "tfaas")
    cert = Path(options["tls_cert_file"])
    assert Path(options["tls_key_file"]).exists()
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True, check=True
    ).stdout
    assert "IP Address:192.0.2.10" in text
    assert options["tls_min_version"] == "TLS1.3"
    assert oct(Path(options["tls_key_file"]).stat().st_mode & 0o777) == "0o640"


def test_secrets_are_private_and_kept(deployment) -> None:
    secret_file = deployment["config_dir"] / "cookie_secret"
    assert len(secret_file.read_text()) == 32
    assert secret_file.read_text() == deployment["secret_before"]
    assert oct(secret_file.stat().st_mode & 0o777) == "0o640"
    assert oct((deployment["config_dir"] / "tfaas.cfg").stat().st_mode & 0o777) == "0o640"
    assert "s3cret-from-iam" not in deployment["first"]  # no_log keeps it out of the output


def test_second_run_changes_nothing(deployment) -> None:
    assert recap_changed(deployment["first"]) > 0
    assert recap_changed(deployment["second"]) == 0
    # The second run reads the client at IAM but does not write it again.
    between = deployment["requests_between"]
    assert "GET /iam/api/client-registration/appliance-client" in between
    assert not [r for r in between if r.startswith("PUT")]


def test_hardened_unit_template(deployment) -> None:
    unit = (deployment["folder"] / "oauth2-proxy@.service").read_text()
    assert f"--config={deployment['config_dir']}/%i.cfg" in unit
    for line in [
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "CapabilityBoundingSet=\n",
        "User=oauth2-proxy",
    ]:
        assert line in unit


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"oauth2_proxy_fronts": [{"name": "x", "port": 4433, "upstream": "http://10.0.0.5:8080/"}]},
            "loopback",
        ),
        ({"oauth2_proxy_issuer_url": "http://iam.example/"}, "https"),
        ({"oauth2_proxy_tls_cert_file": "/etc/ssl/x.pem"}, "tls_key_file"),
        ({"oauth2_proxy_cookie_secret": "short"}, "cookie secret"),
        (
            {"oauth2_proxy_owner_sub": ""},
            "oauth2_proxy_owner_sub is empty and oauth2_proxy_allowed_groups is empty",
        ),
        ({"oauth2_proxy_email_domains": ["*"]}, "oauth2_proxy_email_domains ['*'] would admit every user"),
        ({"oauth2_proxy_allowed_groups": ["cms", "*"]}, "no spaces, commas or wildcards"),
    ],
)
def test_preflight_refuses_bad_settings(tmp_path, override, message) -> None:
    extra = {
        "oauth2_proxy_config_dir": str(tmp_path / "etc"),
        "oauth2_proxy_systemd_dir": str(tmp_path),
        "oauth2_proxy_service_manage": False,
        "oauth2_proxy_client_id": "c",
        "oauth2_proxy_client_secret": "s",
        "oauth2_proxy_public_host": "localhost",
        "oauth2_proxy_owner_sub": "owner-sub",
        **override,
    }
    result = run_role(tmp_path, extra, check=False)
    assert result.returncode != 0
    assert message in result.stdout
    assert not (tmp_path / "etc").exists()  # refused before anything was written


def test_the_owner_alone_passes_by_default(tmp_path) -> None:
    """No allowed group: oauth2-proxy admits one subject, the owner's (sub as the e-mail, no domain)."""
    extra = {
        "oauth2_proxy_config_dir": str(tmp_path / "etc"),
        "oauth2_proxy_systemd_dir": str(tmp_path),
        "oauth2_proxy_service_manage": False,
        "oauth2_proxy_group": grp.getgrgid(os.getgid()).gr_name,
        "oauth2_proxy_client_id": "c",
        "oauth2_proxy_client_secret": "s",
        "oauth2_proxy_public_host": "localhost",
        "oauth2_proxy_owner_sub": "7a3b-owner",
    }
    no_iam = ("preflight", "secrets", "configure")  # the client is given: nothing to complete at IAM
    run_role(tmp_path, extra, steps=no_iam)
    for front in ("mlaas4hep", "tfaas"):
        options = tomllib.loads((tmp_path / "etc" / f"{front}.cfg").read_text())
        assert options["email_domains"] == []
        assert options["oidc_email_claim"] == "sub"
        assert "allowed_groups" not in options
        allowed = Path(options["authenticated_emails_file"])
        assert allowed.read_text().split() == ["7a3b-owner"]
    # Sharing with a group afterwards: the groups decide, and the owner's file goes away.
    run_role(tmp_path, {**extra, "oauth2_proxy_allowed_groups": ["cms"]}, steps=no_iam)
    options = tomllib.loads((tmp_path / "etc" / "mlaas4hep.cfg").read_text())
    assert options["allowed_groups"] == ["cms"] and options["email_domains"] == ["*"]
    assert "authenticated_emails_file" not in options and "oidc_email_claim" not in options
    assert not allowed.exists()
