"""The roles, playbooks and Molecule scenario pass yamllint and ansible-lint (production profile)."""

from __future__ import annotations

import subprocess

from tests.roles.conftest import REPO, VENV_BIN, ansible_env

LINTED = ["roles", "playbooks", "molecule"]


def test_yamllint_is_clean():
    result = subprocess.run(
        [str(VENV_BIN / "yamllint"), "--strict", "--format", "parsable", *LINTED],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile_is_clean():
    result = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--profile", "production", "--nocolor", *LINTED],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        env=ansible_env(),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output, output[-3000:]
