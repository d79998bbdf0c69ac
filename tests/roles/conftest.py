"""Helpers for the provisioning tests: run Ansible from the project's virtual environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def ansible_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        **extra,
    }


def run_preflight(tmp_path: Path, role: str, variables: dict) -> subprocess.CompletedProcess:
    """Run only ``role``'s preflight tasks on this machine (read-only: assertions and stats)."""
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": f"Preflight of {role}",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": True,
                    "tasks": [
                        {
                            "name": "Run the preflight",
                            "ansible.builtin.include_role": {"name": role, "tasks_from": "preflight.yml"},
                        }
                    ],
                }
            ]
        )
    )
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{extra}"],
        capture_output=True,
        text=True,
        env=ansible_env(),
        cwd=REPO,
        timeout=300,
    )


@pytest.fixture
def preflight(tmp_path: Path):
    def run(role: str, **variables: object) -> subprocess.CompletedProcess:
        return run_preflight(tmp_path, role, variables)

    return run
