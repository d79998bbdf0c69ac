"""The README's command, exactly as written, from the repository's top with no extra environment; and site.yml
refusing an inventory that would open the appliance before any role changes anything.

The site.yml runs here go against this machine with ``connection: local`` in check mode: their pre_tasks only
assert and stat, and they stop at the first refusal.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.roles.conftest import REPO, VENV_BIN

EXAMPLE_INVENTORY = "playbooks/inventory/one-vm.example.yml"
LOCAL_INVENTORY = "playbooks/inventory/local.yml"
# The settings of a VM that would pass every preflight on a systemd host.
GOOD = {
    "mlaas4hep_source": "git",
    "mlaas4hep_git_version": "v0.1.0",
    "oauth2_proxy_client_id": "appliance-client",
    "oauth2_proxy_client_secret": "s3cret",
    "xrootd_proxy_origin": "origin.example.org:1094",
    "oauth2_proxy_owner_sub": "7a3b-owner-sub",
}


def clean_env(home: Path) -> dict[str, str]:
    """What a user's shell has: a PATH with ansible-playbook on it and a home; no ANSIBLE_* variable."""
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def ansible_playbook(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env or clean_env(home),
        timeout=300,
    )


def readme_command() -> list[str]:
    """The README's deployment command, as written, its inventory placeholder filled with the example."""
    match = re.search(r"`(ansible-playbook -i \S+ playbooks/site\.yml)`", (REPO / "README.md").read_text())
    assert match, "the README no longer gives the ansible-playbook command"
    words = match.group(1).split()
    assert words[:2] == ["ansible-playbook", "-i"] and words[3:] == ["playbooks/site.yml"], words
    return ["-i", EXAMPLE_INVENTORY, "playbooks/site.yml"]


def test_readme_command_finds_the_roles_from_the_top(tmp_path):
    listed = ansible_playbook(tmp_path, *readme_command(), "--list-tasks")
    output = listed.stdout + listed.stderr
    assert listed.returncode == 0, output[-3000:]
    for role in ("appliance_base", "xrootd_proxy", "mlaas4hep", "tfaas", "oauth2_proxy"):
        assert f"{role} : " in output, f"{role} missing from the task list:\n{output[-3000:]}"
    checked = ansible_playbook(tmp_path, *readme_command(), "--syntax-check")
    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]


def test_without_the_top_level_config_the_roles_are_not_found(tmp_path):
    # The control: the same command with ansible.cfg out of the way fails as it did before it existed.
    empty = tmp_path / "empty.cfg"
    empty.write_text("[defaults]\n")
    env = {**clean_env(tmp_path), "ANSIBLE_CONFIG": str(empty)}
    result = ansible_playbook(
        tmp_path, "-i", EXAMPLE_INVENTORY, "playbooks/site.yml", "--syntax-check", env=env
    )
    assert result.returncode != 0
    # The first role site.yml names (the door's preflight, checked on every host) is not found.
    assert re.search(r"the role '(oauth2_proxy|appliance_base)' was not found", result.stdout + result.stderr)


def test_the_example_inventory_names_one_vm_over_ssh():
    result = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", EXAMPLE_INVENTORY, "--list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    assert inventory["appliance"]["hosts"] == ["mlaas4hep-vm"]
    host = inventory["_meta"]["hostvars"]["mlaas4hep-vm"]
    assert host["ansible_host"] and host["ansible_user"]
    assert "ansible_connection" not in host  # ssh, Ansible's default
    assert host["oauth2_proxy_owner_sub"]  # the example is closed to everyone but its owner


def run_site(tmp_path: Path, variables: dict) -> subprocess.CompletedProcess:
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": str(VENV_BIN / "python"), **variables}))
    return ansible_playbook(
        tmp_path, "-i", LOCAL_INVENTORY, "playbooks/site.yml", "--check", "-e", f"@{extra}"
    )


def first_failure(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    recap = [line for line in output.splitlines() if line.startswith("localhost") and "changed=" in line]
    assert recap and "changed=0" in recap[-1], output[-3000:]
    failed = [line for line in output.splitlines() if "FAILED!" in line]
    assert failed, output[-3000:]
    return failed[0]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"oauth2_proxy_owner_sub": ""}, ["oauth2_proxy_owner_sub", "oauth2_proxy_allowed_groups"]),
        (
            {"oauth2_proxy_email_domains": ["*"]},
            ["oauth2_proxy_email_domains", "oauth2_proxy_open_to_all_users"],
        ),
        (
            {"oauth2_proxy_owner_sub": "", "oauth2_proxy_email_domains": ["example.org"]},
            ["oauth2_proxy_owner_sub"],
        ),
        (
            {"oauth2_proxy_email_domains": ["example.org"]},
            ["oauth2_proxy_email_domains", "those domains"],
        ),
        ({"oauth2_proxy_issuer_url": "http://iam.example.org/"}, ["https"]),
    ],
    ids=[
        "no-owner-no-group",
        "wildcard-domain",
        "domain-without-owner",
        "domain-without-group",
        "plain-http",
    ],
)
def test_site_refuses_an_open_appliance_before_anything(tmp_path, override, named):
    line = first_failure(run_site(tmp_path, {**GOOD, **override}))
    for word in named:
        assert word in line, f"{word!r} not in {line}"


@pytest.mark.parametrize(
    "override",
    [
        {},
        {"oauth2_proxy_owner_sub": "", "oauth2_proxy_allowed_groups": ["cms"]},
        {"oauth2_proxy_allowed_groups": ["cms"], "oauth2_proxy_email_domains": ["cern.ch"]},
        {
            "oauth2_proxy_owner_sub": "",
            "oauth2_proxy_open_to_all_users": True,
            "oauth2_proxy_email_domains": ["*"],
        },
    ],
    ids=["owner", "group", "group-and-domain", "explicit-opt-in"],
)
def test_site_accepts_a_policy_that_names_who_may_pass(tmp_path, override):
    # Past the access checks, the next refusal is the platform's: this machine's PID 1 is not systemd.
    if Path("/run/systemd/system").exists():
        pytest.skip("this machine runs systemd; the platform check would pass and site.yml would go on")
    line = first_failure(run_site(tmp_path, {**GOOD, **override}))
    assert "needs a systemd host" in line, line
