"""site.yml's topology from one inventory (issue #15, docs/scaling.md): which host gets what, as Ansible
derives it from the groups `appliance`, `training_workers` and `inference` with the playbooks' group_vars,
and the refusals of an incomplete multi-host inventory before anything changes.

The derived values come from a playbook beside a link to playbooks/group_vars, run on this machine with every
inventory host on ``connection: local``; it writes each host's values to a JSON file. The site.yml runs are in
check mode and stop at their first refusal (their pre_tasks only assert and stat).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.roles.conftest import REPO, VENV_BIN, ansible_env

SECRET = "k7Q2-mlaas4hep-shared-password-0123456789"
POLICY = {
    "oauth2_proxy_issuer_url": "https://iam.example.org/",
    "oauth2_proxy_client_id": "appliance-client",
    "oauth2_proxy_client_secret": "s3cret",
    "oauth2_proxy_owner_sub": "7a3b-owner-sub",
    "mlaas4hep_source": "git",
    "mlaas4hep_git_version": "v0.1.0",
}
MULTI = {
    **POLICY,
    "redis_broker_password": SECRET,
    "job_store_postgres_password": SECRET + "-store",
    "mlaas4hep_uid": 990,
    "mlaas4hep_gid": 990,
    "appliance_delivery_client_id": "mlaas4hep-workers",
    "appliance_delivery_client_secret": "workers-secret",
    "appliance_delivery_sub": "workers-client-sub",
}
ROLES = [
    "mlaas4hep",
    "tfaas",
    "tfaas_balancer",
    "redis_broker",
    "job_store_postgres",
    "appliance_base",
    "jobs_share_nfs",
]
FRONT = {
    "front": {"appliance_private_address": "10.0.0.10", "xrootd_proxy_origin": "origin.example.org:1094"}
}

# What the derivation playbook writes per host: the values each role reads.
DERIVED = [
    "mlaas4hep_services",
    "mlaas4hep_topology_settings",
    "mlaas4hep_job_network_allow",
    "mlaas4hep_jobs_mounted",
    "mlaas4hep_settings_file_content",
    "tfaas_bind",
    "tfaas_auth",
    "tfaas_balancer_replicas",
    "tfaas_balancer_port",
    "redis_broker_bind",
    "job_store_postgres_listen",
    "job_store_postgres_clients",
    "jobs_share_nfs_clients",
    "jobs_share_nfs_server",
    "appliance_base_public_tcp_ports",
    "appliance_base_private_tcp_ports",
    "appliance_base_tls_enabled",
]


def inventory(
    tmp_path: Path,
    workers: dict[str, dict] | None = None,
    replicas: dict[str, dict] | None = None,
    common: dict | None = None,
    front: dict | None = None,
) -> Path:
    """An inventory of this machine under several names, one group each, ``common`` under all: vars."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    children: dict = {"appliance": {"hosts": {name: {**local, **v} for name, v in (front or FRONT).items()}}}
    if workers:
        children["training_workers"] = {"hosts": {name: {**local, **v} for name, v in workers.items()}}
    if replicas:
        children["inference"] = {"hosts": {name: {**local, **v} for name, v in replicas.items()}}
    path = tmp_path / "inventory.yml"
    path.write_text(
        json.dumps({"all": {"vars": common if common is not None else MULTI, "children": children}})
    )
    return path


def derive(tmp_path: Path, inventory_file: Path) -> dict[str, dict]:
    """Each host's derived values, with the roles' defaults and vars, as site.yml's plays see them."""
    out = tmp_path / "derived"
    out.mkdir()
    (tmp_path / "group_vars").symlink_to(REPO / "playbooks" / "group_vars")
    playbook = tmp_path / "derive.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "Derive each host's values",
                    "hosts": "appliance:training_workers:inference",
                    "gather_facts": False,
                    "pre_tasks": [
                        {
                            "name": "Take the door's defaults, as site.yml's plays do",
                            "ansible.builtin.import_role": {
                                "name": "oauth2_proxy",
                                "tasks_from": "preflight.yml",
                            },
                        }
                    ],
                    # Listed, not run: their defaults and vars at their real precedence, below the inventory.
                    "roles": [{"role": role, "when": False} for role in ROLES],
                    "tasks": [
                        {
                            "name": "Write the values",
                            "ansible.builtin.copy": {
                                "content": "{{ dict(__names | zip(query('ansible.builtin.vars', *__names)))"
                                " | to_nice_json }}",
                                "dest": f"{out}/{{{{ inventory_hostname }}}}.json",
                                "mode": "0644",
                            },
                            "vars": {"__names": DERIVED},
                        },
                    ],
                }
            ]
        )
    )
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory_file), str(playbook)],
        capture_output=True,
        text=True,
        env=ansible_env(),
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}


def test_the_front_alone_is_the_one_vm_appliance(tmp_path):
    hosts = derive(tmp_path, inventory(tmp_path, common=POLICY))
    front = hosts["front"]
    assert front["mlaas4hep_services"] == ["api", "worker"]
    assert front["mlaas4hep_topology_settings"] == {}
    assert front["mlaas4hep_job_network_allow"] == ["127.0.0.1:1094"]
    assert not front["mlaas4hep_jobs_mounted"]
    settings = front["mlaas4hep_settings_file_content"]
    assert not {"queue_url", "store_url", "tfaas_replicas"} & settings.keys()
    assert front["appliance_base_private_tcp_ports"] == []
    assert front["appliance_base_public_tcp_ports"] == [4433, 8081]
    assert front["appliance_base_tls_enabled"]
    assert "publisher_subs" not in front["tfaas_auth"]


def test_every_group_gets_its_part(tmp_path):
    hosts = derive(
        tmp_path,
        inventory(
            tmp_path,
            workers={"worker-1": {"ansible_host": "10.0.0.11"}, "worker-2": {"ansible_host": "10.0.0.12"}},
            replicas={
                "tfaas-1": {"ansible_host": "10.0.0.21", "tfaas_port": 9083},
                "tfaas-2": {"ansible_host": "10.0.0.22"},
            },
        ),
    )
    front, worker, replica = hosts["front"], hosts["worker-1"], hosts["tfaas-1"]
    workers = ["10.0.0.11", "10.0.0.12"]

    # The front: the API alone, the broker and the store on loopback for itself and open to the workers only.
    assert front["mlaas4hep_services"] == ["api"]
    assert front["mlaas4hep_topology_settings"] == {
        "queue_url": f"redis://:{SECRET}@127.0.0.1:6379/0",
        "store_url": f"postgresql+psycopg://mlaas4hep:{SECRET}-store@127.0.0.1:5432/mlaas4hep",
    }
    # The API checks workflows' root:// URLs against the endpoints the workers' jobs reach.
    assert front["mlaas4hep_job_network_allow"] == ["10.0.0.10:1094"]
    assert front["redis_broker_bind"] == ["127.0.0.1", "10.0.0.10"]
    assert front["job_store_postgres_listen"] == ["127.0.0.1", "10.0.0.10"]
    assert front["job_store_postgres_clients"] == workers
    assert front["jobs_share_nfs_clients"] == workers
    assert front["tfaas_balancer_replicas"] == ["10.0.0.21:9083", "10.0.0.22:8083"]
    assert str(front["tfaas_balancer_port"]) == "8083"
    rules = {int(rule["port"]): rule["sources"] for rule in front["appliance_base_private_tcp_ports"]}
    assert rules == {6379: workers, 5432: workers, 1094: workers, 2049: workers}
    assert front["appliance_base_public_tcp_ports"] == [4433, 8081]

    # A worker: the workers alone, the front's queue, store and XRootD proxy, every replica for its models.
    assert worker["mlaas4hep_services"] == ["worker"]
    assert worker["mlaas4hep_jobs_mounted"]
    assert worker["mlaas4hep_job_network_allow"] == ["10.0.0.10:1094"]
    assert worker["jobs_share_nfs_server"] == "10.0.0.10"
    settings = worker["mlaas4hep_settings_file_content"]
    assert settings["queue_url"] == f"redis://:{SECRET}@10.0.0.10:6379/0"
    assert settings["store_url"] == f"postgresql+psycopg://mlaas4hep:{SECRET}-store@10.0.0.10:5432/mlaas4hep"
    assert settings["tfaas_replicas"] == "http://10.0.0.21:9083,http://10.0.0.22:8083"
    assert settings["delivery_issuer"] == "https://iam.example.org/"
    assert settings["delivery_client_id"] == "mlaas4hep-workers"
    assert settings["delivery_client_secret"] == "workers-secret"
    assert settings["delivery_audience"] in settings["auth"]["audiences"]
    assert settings["job_network_allow"] == "10.0.0.10:1094"
    assert settings["auth"]["owner_sub"] == "7a3b-owner-sub"
    assert worker["appliance_base_public_tcp_ports"] == []
    assert not worker["appliance_base_tls_enabled"]
    # A multi-worker job's tasks listen in one range, open to the other workers only.
    assert settings["worker_address"] == "10.0.0.11" and settings["task_ports"] == "29200-29299"
    rules = worker["appliance_base_private_tcp_ports"]
    ranges = [(int(r["port"]), int(r["last_port"]), r["sources"]) for r in rules]
    assert ranges == [(29200, 29299, ["10.0.0.12"])]

    # A replica: TFaaS on its private address, open to the front and the workers, the workers may publish.
    assert replica["mlaas4hep_services"] == []
    assert replica["tfaas_bind"] == "10.0.0.21"
    assert replica["tfaas_auth"]["publisher_subs"] == ["workers-client-sub"]
    assert replica["tfaas_auth"]["owner_sub"] == "7a3b-owner-sub"
    assert replica["tfaas_auth"]["audiences"] == front["tfaas_auth"]["audiences"]
    assert [(int(r["port"]), r["sources"]) for r in replica["appliance_base_private_tcp_ports"]] == [
        (9083, ["10.0.0.10", *workers])
    ]
    assert replica["appliance_base_public_tcp_ports"] == []


def test_replicas_without_workers_are_fed_by_the_fronts_worker(tmp_path):
    hosts = derive(tmp_path, inventory(tmp_path, replicas={"tfaas-1": {"ansible_host": "10.0.0.21"}}))
    front = hosts["front"]
    assert front["mlaas4hep_services"] == ["api", "worker"]
    assert front["mlaas4hep_topology_settings"]["tfaas_replicas"] == "http://10.0.0.21:8083"
    assert "queue_url" not in front["mlaas4hep_topology_settings"]
    assert front["appliance_base_private_tcp_ports"] == []


def test_adding_a_worker_changes_nothing_for_the_replicas_settings_but_the_allowed_sources(tmp_path):
    one = derive(
        tmp_path / "one", inventory(_mk(tmp_path / "one"), workers={"w1": {"ansible_host": "10.0.0.11"}})
    )
    two = derive(
        tmp_path / "two",
        inventory(
            _mk(tmp_path / "two"),
            workers={"w1": {"ansible_host": "10.0.0.11"}, "w2": {"ansible_host": "10.0.0.12"}},
        ),
    )
    # The existing worker's settings and units are the same; the front learns the new address.
    for key in ("mlaas4hep_settings_file_content", "mlaas4hep_services", "mlaas4hep_job_network_allow"):
        assert one["w1"][key] == two["w1"][key], key
        assert one["front"][key] == two["front"][key], key
    assert two["front"]["job_store_postgres_clients"] == ["10.0.0.11", "10.0.0.12"]


def _mk(path: Path) -> Path:
    path.mkdir()
    return path


def site(tmp_path: Path, inventory_file: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(inventory_file),
            "playbooks/site.yml",
            "--check",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=ansible_env(),
        cwd=REPO,
        timeout=300,
    )


def refused(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    recap = [line for line in output.splitlines() if " changed=" in line]
    assert recap and all("changed=0" in line for line in recap), output[-3000:]
    return output


WORKER = {"worker-1": {"ansible_host": "10.0.0.11"}}
REPLICA = {"tfaas-1": {"ansible_host": "10.0.0.21"}}


@pytest.mark.parametrize(
    ("drop", "replicas", "named"),
    [
        ("redis_broker_password", None, ["redis_broker_password", "worker-1"]),
        ("job_store_postgres_password", None, ["job_store_postgres_password"]),
        ("mlaas4hep_uid", None, ["mlaas4hep_uid"]),
        ("appliance_delivery_client_secret", REPLICA, ["appliance_delivery_client_secret"]),
        ("appliance_delivery_sub", REPLICA, ["appliance_delivery_sub"]),
    ],
    ids=["no-broker-password", "no-store-password", "no-uid", "no-delivery-secret", "no-delivery-sub"],
)
def test_site_refuses_an_incomplete_multi_host_inventory_before_anything(tmp_path, drop, replicas, named):
    common = {key: value for key, value in MULTI.items() if key != drop}
    output = refused(site(tmp_path, inventory(tmp_path, workers=WORKER, replicas=replicas, common=common)))
    failed = [line for line in output.splitlines() if "failed:" in line or "FAILED!" in line]
    assert failed, output[-3000:]
    for word in named:
        assert word in "\n".join(failed), f"{word!r} not in {failed}"
    # Nothing of any role ran: the topology is checked first.
    assert "Install" not in output


def test_site_refuses_a_name_as_private_address(tmp_path):
    workers = {"worker-1": {"ansible_host": "worker-1.example.org"}}
    output = refused(site(tmp_path, inventory(tmp_path, workers=workers)))
    assert "appliance_private_address" in output and "worker-1.example.org" in output, output[-3000:]


def test_site_refuses_a_policy_left_on_the_front(tmp_path):
    common = {key: value for key, value in MULTI.items() if not key.startswith("oauth2_proxy_")}
    front = {"front": {**FRONT["front"], **{k: v for k, v in MULTI.items() if k.startswith("oauth2_proxy_")}}}
    output = refused(site(tmp_path, inventory(tmp_path, workers=WORKER, common=common, front=front)))
    assert "does not have the front's access policy" in output, output[-3000:]


def test_site_refuses_a_host_in_two_groups(tmp_path):
    path = inventory(tmp_path, workers=WORKER)
    data = json.loads(path.read_text())
    data["all"]["children"]["inference"] = {"hosts": {"worker-1": {}}}
    path.write_text(json.dumps(data))
    output = refused(site(tmp_path, path))
    assert "a host belongs to one of appliance, training_workers and inference" in output, output[-3000:]


def test_a_complete_multi_host_inventory_passes_the_topology_checks(tmp_path):
    if Path("/run/systemd/system").exists():
        pytest.skip("this machine runs systemd; the platform check would pass and site.yml would go on")
    output = refused(site(tmp_path, inventory(tmp_path, workers=WORKER, replicas=REPLICA)))
    # The first refusal is this machine's platform (no systemd), after every topology check passed.
    assert "needs a systemd host" in output, output[-3000:]
    assert "Check the delivery of models to the TFaaS replicas" in output


def test_the_multi_host_example_lists_every_group_and_its_roles(tmp_path):
    example = "playbooks/inventory/multi-host.example.yml"
    listed = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", example, "--list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)
    assert len(groups["appliance"]["hosts"]) == 1
    assert len(groups["training_workers"]["hosts"]) == 2
    assert len(groups["inference"]["hosts"]) == 1
    tasks = site(tmp_path, REPO / example, "--list-tasks")
    output = tasks.stdout + tasks.stderr
    assert tasks.returncode == 0, output[-3000:]
    plays = output.split("play #")[1:]
    front = next(play for play in plays if "(appliance)" in play.splitlines()[0])
    for role in ("redis_broker", "job_store_postgres", "jobs_share_nfs", "tfaas_balancer", "oauth2_proxy"):
        assert f"{role} : " in front, role
    workers = next(play for play in plays if "(training_workers)" in play.splitlines()[0])
    assert "jobs_share_nfs : Mount the front's job folder" in workers and "mlaas4hep : " in workers
    assert "tfaas : " not in workers
    replicas = next(play for play in plays if "(inference)" in play.splitlines()[0])
    assert "tfaas : Enable and start TFaaS" in replicas
