"""Every role refuses bad settings in its preflight, with a message naming the setting, before any change.

The preflight tasks run on this machine with `connection: local`; they only assert and stat.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GOOD_SOURCE = {
    "mlaas4hep_source": "git",
    "mlaas4hep_git_version": "v0.1.0",
    "mlaas4hep_owner_sub": "owner-sub",
}
TFAAS_OWNER = {"tfaas_owner_sub": "owner-sub"}


def assert_refused(result, *words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for word in words:
        assert word in output, f"{word!r} not in the failure:\n{output[-3000:]}"


def assert_accepted(result) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_xrootd_proxy_accepts_a_direct_proxy_with_a_cache(preflight):
    assert_accepted(
        preflight(
            "xrootd_proxy",
            xrootd_proxy_origin="xrootd-cms.infn.it:1094",
            xrootd_proxy_cache_enabled=True,
            xrootd_proxy_cache_dir="/var/cache/xrootd",
        )
    )


def test_xrootd_proxy_accepts_a_forwarding_proxy_without_origin(preflight):
    assert_accepted(preflight("xrootd_proxy", xrootd_proxy_mode="forwarding"))


def test_xrootd_proxy_needs_an_origin_in_direct_mode(preflight):
    assert_refused(preflight("xrootd_proxy", xrootd_proxy_origin=""), "xrootd_proxy_origin", "host:port")


def test_xrootd_proxy_refuses_an_unknown_mode(preflight):
    assert_refused(
        preflight("xrootd_proxy", xrootd_proxy_mode="reverse", xrootd_proxy_origin="o:1094"),
        "xrootd_proxy_mode",
    )


def test_xrootd_proxy_refuses_a_cache_bigger_than_the_disk(preflight):
    assert_refused(
        preflight(
            "xrootd_proxy",
            xrootd_proxy_origin="origin.example.org:1094",
            xrootd_proxy_cache_enabled=True,
            xrootd_proxy_cache_low_watermark="900p",
            xrootd_proxy_cache_high_watermark="1000000t",
        ),
        "watermarks",
    )
    assert_refused(
        preflight(
            "xrootd_proxy",
            xrootd_proxy_origin="origin.example.org:1094",
            xrootd_proxy_cache_enabled=True,
            xrootd_proxy_cache_low_watermark="900000T",
            xrootd_proxy_cache_high_watermark="1000000T",
        ),
        "within the disk",
    )


def test_xrootd_proxy_refuses_watermarks_in_the_wrong_order(preflight):
    assert_refused(
        preflight(
            "xrootd_proxy",
            xrootd_proxy_origin="origin.example.org:1094",
            xrootd_proxy_cache_enabled=True,
            xrootd_proxy_cache_low_watermark=0.95,
            xrootd_proxy_cache_high_watermark=0.90,
        ),
        "low below high",
    )


def test_xrootd_proxy_refuses_a_missing_credential_file(preflight, tmp_path):
    assert_refused(
        preflight(
            "xrootd_proxy",
            xrootd_proxy_origin="origin.example.org:1094",
            xrootd_proxy_x509_proxy_file=str(tmp_path / "x509up_u0"),
        ),
        "x509up_u0",
        "missing",
    )
    token = tmp_path / "token"
    token.write_text("eyJ")
    assert_refused(
        preflight(
            "xrootd_proxy",
            xrootd_proxy_origin="origin.example.org:1094",
            xrootd_proxy_x509_proxy_file=str(token),
            xrootd_proxy_token_file=str(token),
        ),
        "not both",
    )


def test_mlaas4hep_accepts_a_pinned_git_source(preflight):
    assert_accepted(preflight("mlaas4hep", **GOOD_SOURCE))


def test_mlaas4hep_accepts_isolation_endpoints_of_another_host(preflight):
    allowed = ["10.0.0.5:1094", "[fd00::5]:1094", "localhost:8443"]
    assert_accepted(preflight("mlaas4hep", **GOOD_SOURCE, mlaas4hep_job_network_allow=allowed))


def test_mlaas4hep_accepts_a_dask_scheduler_address(preflight):
    assert_accepted(preflight("mlaas4hep", **GOOD_SOURCE, mlaas4hep_dask_scheduler="tcp://10.0.3.5:8786"))


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"mlaas4hep_source": "git", "mlaas4hep_git_version": ""}, ["mlaas4hep_git_version"]),
        ({**GOOD_SOURCE, "mlaas4hep_source": "archive"}, ["mlaas4hep_source_archive"]),
        (
            {
                **GOOD_SOURCE,
                "mlaas4hep_source": "archive",
                "mlaas4hep_source_archive": "/nonexistent/src.tar.gz",
            },
            ["does not exist"],
        ),
        ({**GOOD_SOURCE, "mlaas4hep_port": 70000}, ["mlaas4hep_port"]),
        ({**GOOD_SOURCE, "mlaas4hep_environment": {"PATH": "/tmp"}}, ["MLAAS4HEP_"]),
        ({**GOOD_SOURCE, "mlaas4hep_user": "root"}, ["not root"]),
        ({**GOOD_SOURCE, "mlaas4hep_job_uids": "0-999"}, ["mlaas4hep_job_uids", "from 1000 up"]),
        ({**GOOD_SOURCE, "mlaas4hep_job_uids": "62000-61000"}, ["mlaas4hep_job_uids"]),
        ({**GOOD_SOURCE, "mlaas4hep_job_network_allow": []}, ["mlaas4hep_job_network_allow"]),
        (
            {**GOOD_SOURCE, "mlaas4hep_job_network_allow": ["proxy.example.org:1094"]},
            ["mlaas4hep_job_network_allow", "IP addresses"],
        ),
        ({**GOOD_SOURCE, "mlaas4hep_settings": {"job_uids": "1000-1999"}}, ["not", "mlaas4hep_settings"]),
        (
            {**GOOD_SOURCE, "mlaas4hep_dask_scheduler": "tcp://sched.example:8786"},
            ["mlaas4hep_dask_scheduler", "IP address"],
        ),
        (
            {**GOOD_SOURCE, "mlaas4hep_settings": {"dask_scheduler": "tcp://10.0.3.5:8786"}},
            ["not", "mlaas4hep_settings"],
        ),
    ],
    ids=[
        "unpinned-git",
        "no-archive",
        "missing-archive",
        "bad-port",
        "foreign-env",
        "root-user",
        "system-uids",
        "reversed-uids",
        "no-endpoint",
        "named-endpoint",
        "uids-in-settings",
        "named-dask-scheduler",
        "dask-scheduler-in-settings",
    ],
)
def test_mlaas4hep_refuses_bad_settings(preflight, variables, words):
    assert_refused(preflight("mlaas4hep", **variables), *words)


def test_tfaas_needs_the_application_installed(preflight, tmp_path):
    assert_refused(
        preflight("tfaas", tfaas_venv=str(tmp_path / "venv"), tfaas_model_dir=str(tmp_path), **TFAAS_OWNER),
        "apply the mlaas4hep role first",
    )


def test_tfaas_accepts_an_existing_install(preflight, tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    assert_accepted(
        preflight("tfaas", tfaas_venv=str(tmp_path / "venv"), tfaas_model_dir=str(tmp_path), **TFAAS_OWNER)
    )


def test_tfaas_refuses_the_port_in_its_settings(preflight, tmp_path):
    assert_refused(preflight("tfaas", tfaas_settings={"port": 9000}, **TFAAS_OWNER), "tfaas_port")


def test_appliance_base_refuses_half_a_tls_pair(preflight):
    assert_refused(preflight("appliance_base", appliance_base_tls_cert_src="/etc/ssl/cert.pem"), "both")


def test_appliance_base_refuses_a_bad_port(preflight):
    assert_refused(preflight("appliance_base", appliance_base_public_tcp_ports=[4433, 0]), "1-65535")


@pytest.mark.skipif(Path("/run/systemd/system").exists(), reason="this machine runs systemd")
def test_appliance_base_needs_systemd(preflight):
    # This machine's PID 1 is not systemd: the platform check is what stops the role here.
    assert_refused(preflight("appliance_base"), "needs a systemd host")


@pytest.mark.parametrize("role", ["mlaas4hep", "tfaas"])
@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({}, ["{role}_owner_sub is empty", "{role}_allowed_groups", "{role}_open_to_all_users"]),
        ({"{role}_owner_sub": "o", "{role}_oidc_issuer": "http://iam.example.org/"}, ["https://"]),
        ({"{role}_owner_sub": "o", "{role}_oidc_audiences": []}, ["{role}_oidc_audiences"]),
        ({"{role}_owner_sub": "o", "{role}_auth_extra": {"owner_sub": "x"}}, ["{role}_auth_extra"]),
        (
            {"{role}_owner_sub": "o", "{role}_settings": {"auth": {"mode": "disabled"}}},
            ["{role}_settings.auth"],
        ),
    ],
    ids=["open", "plain-http-issuer", "no-audience", "policy-in-extra", "auth-in-settings"],
)
def test_services_refuse_an_open_or_half_configured_oidc_check(preflight, tmp_path, role, variables, words):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    base = (
        GOOD_SOURCE
        if role == "mlaas4hep"
        else {"tfaas_venv": str(tmp_path / "venv"), "tfaas_model_dir": str(tmp_path)}
    )
    base = {key: value for key, value in base.items() if not key.endswith("_owner_sub")}
    given = {key.format(role=role): value for key, value in variables.items()}
    assert_refused(preflight(role, **base, **given), *(word.format(role=role) for word in words))


@pytest.mark.parametrize("role", ["mlaas4hep", "tfaas"])
@pytest.mark.parametrize(
    "variables",
    [{"{role}_owner_sub": "o"}, {"{role}_allowed_groups": ["cms"]}, {"{role}_open_to_all_users": True}],
    ids=["owner", "group", "explicit-opt-in"],
)
def test_services_accept_a_policy_that_names_who_may_call(preflight, tmp_path, role, variables):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    base = (
        GOOD_SOURCE
        if role == "mlaas4hep"
        else {"tfaas_venv": str(tmp_path / "venv"), "tfaas_model_dir": str(tmp_path)}
    )
    base = {key: value for key, value in base.items() if not key.endswith("_owner_sub")}
    given = {key.format(role=role): value for key, value in variables.items()}
    assert_accepted(preflight(role, **base, **given))


@pytest.mark.parametrize(
    ("rules", "accepted"),
    [
        ([{"port": 6379, "sources": ["10.0.0.11", "fd00::11"]}], True),
        ([{"port": 6379, "sources": []}], True),  # no worker: opens nothing
        ([{"port": 6379, "sources": ["0.0.0.0/0"]}], False),
        ([{"port": 6379, "sources": ["worker-1.example.org"]}], False),
        ([{"port": 6379}], False),
        ([{"port": 0, "sources": ["10.0.0.11"]}], False),
    ],
    ids=["addresses", "no-source", "every-address", "name", "no-sources-key", "bad-port"],
)
def test_appliance_base_opens_private_ports_to_addresses_only(preflight, rules, accepted):
    result = preflight("appliance_base", appliance_base_private_tcp_ports=rules)
    output = result.stdout + result.stderr
    if accepted:
        assert "appliance_base_private_tcp_ports must" not in output, output[-3000:]
        # Past the port checks, the next refusal is this machine's platform when PID 1 is not systemd.
        assert result.returncode == 0 or "needs a systemd host" in output, output[-3000:]
    else:
        assert_refused(result, "appliance_base_private_tcp_ports")


@pytest.mark.parametrize(
    ("services", "accepted"),
    [(["api"], True), (["worker"], True), ([], True), (["api", "worker"], True), (["scheduler"], False)],
)
def test_mlaas4hep_takes_its_part_of_the_topology(preflight, services, accepted):
    result = preflight("mlaas4hep", **GOOD_SOURCE, mlaas4hep_services=services)
    if accepted:
        assert_accepted(result)
    else:
        assert_refused(result, "mlaas4hep_services")


def test_mlaas4hep_refuses_a_uid_that_is_not_a_number(preflight):
    assert_refused(preflight("mlaas4hep", **GOOD_SOURCE, mlaas4hep_uid="mlaas4hep"), "mlaas4hep_uid")


def test_tfaas_refuses_a_wildcard_publisher(preflight, tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    base = {"tfaas_venv": str(tmp_path / "venv"), "tfaas_model_dir": str(tmp_path), **TFAAS_OWNER}
    assert_accepted(preflight("tfaas", **base, tfaas_publisher_subs=["workers-client-sub"]))
    assert_refused(preflight("tfaas", **base, tfaas_publisher_subs=["*"]), "tfaas_publisher_subs")
    assert_refused(preflight("tfaas", **base, tfaas_auth_extra={"publisher_subs": ["x"]}), "tfaas_auth_extra")
