"""The mlaas4hep role on a host with or without an NVIDIA GPU, without a GPU: its detection run against
directories laid out as /dev and /sys, the GPU requirements it derives from requirements.txt, and the worker
unit it renders (the NVIDIA devices reach the jobs only on a GPU host)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.roles.conftest import REPO, VENV_BIN, ansible_env
from tests.roles.test_preflight import GOOD_SOURCE
from tests.roles.test_scaling_templates import render


def run_tasks(tmp_path: Path, tasks_from: str, variables: dict, record: dict[str, str]) -> dict[str, str]:
    """Run the role's ``tasks_from`` here, then write each of ``record``'s expressions to a file."""
    playbook = [
        {
            "name": f"Run {tasks_from}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Run the role's tasks",
                    "ansible.builtin.include_role": {
                        "name": "mlaas4hep",
                        "tasks_from": tasks_from,
                        "public": True,
                    },
                },
                *(
                    {
                        "name": f"Record {key}",
                        "ansible.builtin.copy": {
                            "content": "{{ " + expression + " }}",
                            "dest": str(tmp_path / f"{key}.out"),
                            "mode": "0644",
                        },
                    }
                    for key, expression in record.items()
                ),
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(json.dumps(playbook))
    (tmp_path / "vars.json").write_text(
        json.dumps({"ansible_python_interpreter": sys.executable, **variables})
    )
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml"),
         "-e", f"@{tmp_path / 'vars.json'}"],
        capture_output=True, text=True, env=ansible_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return {key: (tmp_path / f"{key}.out").read_text() for key in record}


def host(root: Path, device: bool = False, vendors: tuple[str, ...] = ()) -> Path:
    """A /dev and /sys/bus/pci/devices as the kernel shows them (devices are links into /sys/devices)."""
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "null").touch()
    if device:
        (root / "dev" / "nvidia0").touch()
    devices = root / "sys" / "bus" / "pci" / "devices"
    devices.mkdir(parents=True)
    for i, vendor in enumerate(vendors):
        real = root / "sys" / "devices" / "pci0000:00" / f"0000:0{i}:00.0"
        real.mkdir(parents=True)
        (real / "vendor").write_text(f"{vendor}\n")
        (real / "class").write_text("0x030200\n")
        (devices / real.name).symlink_to(real)
    return root


@pytest.mark.parametrize(
    ("choice", "device", "vendors", "num_gpus", "expected"),
    [
        ("auto", False, (), 0, "False"),
        ("auto", False, ("0x8086", "0x1af4"), 0, "False"),
        ("auto", True, (), 0, "True"),  # the driver is loaded
        ("auto", False, ("0x8086", "0x10de"), 0, "True"),  # a fresh image: the card, no driver yet
        ("auto", False, (), 1, "True"),  # TOSCA asked for a GPU flavour
        (False, True, ("0x10de",), 1, "False"),
        (True, False, (), 0, "True"),
    ],
)
def test_the_role_detects_an_nvidia_gpu(tmp_path, choice, device, vendors, num_gpus, expected):
    root = host(tmp_path / "host", device, vendors)
    variables = {
        "mlaas4hep_gpu": choice,
        "mlaas4hep_gpu_probe_root": str(root),
        "mlaas4hep_num_gpus": num_gpus,
    }
    got = run_tasks(tmp_path, "gpu.yml", variables, {"enabled": "mlaas4hep_gpu_enabled | bool"})
    assert got["enabled"] == expected


def test_a_gpu_host_installs_requirements_txt_with_the_gpu_builds(tmp_path):
    variables = {"mlaas4hep_src_dir": str(REPO), "mlaas4hep_install_dir": str(tmp_path)}
    run_tasks(tmp_path, "gpu_requirements.yml", variables, {})
    gpu = (tmp_path / "requirements-gpu.txt").read_text().splitlines()
    cpu = (REPO / "requirements.txt").read_text().splitlines()
    tensorflow = next(line for line in cpu if line.startswith("tensorflow-cpu=="))
    assert tensorflow.replace("tensorflow-cpu", "tensorflow[and-cuda]") in gpu
    assert [line for line in cpu if line != tensorflow] == [line for line in gpu if "tensorflow[" not in line]


@pytest.mark.parametrize("gpu", [False, True])
def test_the_worker_unit_lets_jobs_reach_the_nvidia_devices_only_on_a_gpu_host(tmp_path, gpu):
    unit = render(
        tmp_path, "mlaas4hep", "mlaas4hep-worker.service.j2", {**GOOD_SOURCE, "mlaas4hep_gpu_enabled": gpu}
    )
    lines = unit.read_text().splitlines()
    if gpu:
        assert "PrivateDevices=no" in lines and "DevicePolicy=closed" in lines
        assert {"DeviceAllow=char-nvidia-frontend rw", "DeviceAllow=char-nvidia-uvm rw"} <= set(lines)
    else:
        assert "PrivateDevices=yes" in lines and not any(line.startswith("DeviceAllow") for line in lines)
