"""TOSCA's N training workers and M TFaaS replicas (issue #15, docs/scaling.md): the counts are INDIGO's
scalable capability of two more compute nodes; what follows from them on each VM (which services run, the
queue, store and replicas each VM is told about, whether a front-side role applies at all) is rendered as the
orchestrator renders it, then evaluated by Ansible exactly as the configure playbook would see it: each node's
inputs as play variables, and its playbook's own ``when`` on the role.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tosca.orchestrator import (
    TEMPLATE,
    TEST_IAM_CLIENT,
    Deployment,
    configure_of,
    local_copy,
    project_node_types,
    read_yaml,
    require_base_types,
)

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
QUEUE = "q7Q2-mlaas4hep-queue-password-0123456789"
STORE = "s7Q2-mlaas4hep-store-password-0123456789"
SCALED = {
    "iam_owner_sub": "8b1c7e9a-owner",
    "queue_password": QUEUE,
    "store_password": STORE,
    "workers_client_id": "mlaas4hep-workers",
    "workers_client_secret": "workers-secret",
    "workers_client_sub": "workers-sub",
}
FRONT = "10.0.0.10"
WORKERS = ["10.0.1.11", "10.0.1.12"]
REPLICAS = ["10.0.2.11"]


def evaluate(tmp_path: Path, inputs: dict) -> dict[str, dict]:
    """Each deployed node's configure inputs as Ansible evaluates them, and whether its role applies."""
    require_base_types()
    plan = Deployment(TEMPLATE, inputs, injected={"iam_client": TEST_IAM_CLIENT})
    types = project_node_types()
    plays = []
    for name in plan.project_nodes():
        playbook = read_yaml(local_copy(configure_of(types[plan.node(name)["type"]])["implementation"]))
        (entry,) = playbook[0]["roles"]
        condition = entry.get("when", "true")
        variables = plan.configure_inputs(name)
        names = sorted(variables)
        plays.append(
            {
                "name": f"Evaluate {name}",
                "hosts": "localhost",
                "connection": "local",
                "gather_facts": False,
                "vars": {**variables, "__names": names},
                "tasks": [
                    {
                        "name": "Write the evaluated inputs",
                        "ansible.builtin.copy": {
                            "content": "{{ {'values': dict(__names"
                            " | zip(query('ansible.builtin.vars', *__names))),"
                            f" 'applied': ({condition}) | bool}} | to_json }}}}",
                            "dest": str(tmp_path / f"{name}.json"),
                            "mode": "0644",
                        },
                    }
                ],
            }
        )
    (tmp_path / "evaluate.yml").write_text(json.dumps(plays))
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp_path / "evaluate.yml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "LANG": "C.UTF-8",
        },
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return {path.stem: json.loads(path.read_text()) for path in tmp_path.glob("*.json")}


def test_the_defaults_deploy_the_one_vm_appliance(tmp_path):
    nodes = evaluate(tmp_path, {"iam_owner_sub": "8b1c7e9a-owner"})
    assert not {"training_worker", "tfaas_replica", "worker_base", "replica_base"} & nodes.keys()
    front = nodes["mlaas4hep"]["values"]
    assert front["mlaas4hep_services"] == ["api", "worker"]
    assert front["mlaas4hep_topology_settings"] == {}
    assert front["mlaas4hep_uid"] == front["mlaas4hep_gid"] == ""
    assert front["mlaas4hep_job_network_allow"] == ["127.0.0.1:1094"]
    assert front["mlaas4hep_dask_scheduler"] == ""  # a local Dask cluster in each predict job
    # TFaaS on the front; the roles of a multi-VM deployment do nothing.
    assert nodes["tfaas"]["applied"] and int(nodes["tfaas"]["values"]["tfaas_port"]) == 8083
    for name in ("redis_broker", "job_store", "jobs_share", "tfaas_balancer"):
        assert not nodes[name]["applied"], name
    # The firewall opens nothing more than before.
    rules = nodes["appliance_base"]["values"]["appliance_base_private_tcp_ports"]
    assert all(rule["sources"] == [] for rule in rules), rules


def test_a_password_alone_deploys_no_broker(tmp_path):
    nodes = evaluate(tmp_path, {"iam_owner_sub": "o", "queue_password": QUEUE})
    assert not nodes["redis_broker"]["applied"]


def test_workers_and_replicas_each_get_their_part(tmp_path):
    scheduler = "tcp://10.0.3.5:8786"
    inputs = {**SCALED, "num_training_workers": 2, "num_tfaas_replicas": 1, "dask_scheduler": scheduler}
    nodes = evaluate(tmp_path, inputs)

    front = nodes["mlaas4hep"]["values"]
    assert front["mlaas4hep_services"] == ["api"]
    assert front["mlaas4hep_topology_settings"] == {
        "queue_url": f"redis://:{QUEUE}@127.0.0.1:6379/0",
        "store_url": f"postgresql+psycopg://mlaas4hep:{STORE}@127.0.0.1:5432/mlaas4hep",
    }
    assert front["mlaas4hep_uid"] == "60990"
    assert front["mlaas4hep_job_network_allow"] == [f"{FRONT}:1094"]
    for name in ("redis_broker", "job_store", "jobs_share", "tfaas_balancer"):
        assert nodes[name]["applied"], name
    assert not nodes["tfaas"]["applied"]  # haproxy has the port
    assert nodes["redis_broker"]["values"]["redis_broker_password"] == QUEUE
    assert nodes["redis_broker"]["values"]["redis_broker_bind"] == ["127.0.0.1", FRONT]
    assert nodes["job_store"]["values"]["job_store_postgres_clients"] == WORKERS
    assert nodes["jobs_share"]["values"]["jobs_share_nfs_clients"] == WORKERS
    assert nodes["tfaas_balancer"]["values"]["tfaas_balancer_replicas"] == [f"{REPLICAS[0]}:8083"]
    rules = {
        rule["port"]: rule["sources"]
        for rule in nodes["appliance_base"]["values"]["appliance_base_private_tcp_ports"]
    }
    assert rules == {6379: WORKERS, 5432: WORKERS, 1094: WORKERS, 2049: WORKERS}

    worker = nodes["training_worker"]["values"]
    assert worker["mlaas4hep_services"] == ["worker"]
    assert worker["mlaas4hep_jobs_mounted"] is True
    assert worker["mlaas4hep_job_network_allow"] == [f"{FRONT}:1094"]
    # Predict jobs run on the worker VMs: they, and the front (a one-VM appliance's worker), get it.
    assert worker["mlaas4hep_dask_scheduler"] == front["mlaas4hep_dask_scheduler"] == scheduler
    assert (worker["mlaas4hep_uid"], worker["mlaas4hep_gid"]) == (
        front["mlaas4hep_uid"],
        front["mlaas4hep_gid"],
    )
    assert worker["mlaas4hep_topology_settings"] == {
        "queue_url": f"redis://:{QUEUE}@{FRONT}:6379/0",
        "store_url": f"postgresql+psycopg://mlaas4hep:{STORE}@{FRONT}:5432/mlaas4hep",
        "tfaas_replicas": f"http://{REPLICAS[0]}:8083",
        "delivery_issuer": "https://iam.cloud.infn.it/",
        "delivery_client_id": "mlaas4hep-workers",
        "delivery_client_secret": "workers-secret",
        "delivery_audience": "mlaas4hep",
    }
    assert worker["mlaas4hep_owner_sub"] == front["mlaas4hep_owner_sub"] == "8b1c7e9a-owner"
    assert nodes["worker_jobs_share"]["values"]["jobs_share_nfs_server"] == FRONT
    assert nodes["worker_jobs_share"]["applied"]
    assert nodes["worker_base"]["values"]["appliance_base_public_tcp_ports"] == []
    assert nodes["worker_base"]["values"]["appliance_base_tls_enabled"] is False

    replica = nodes["tfaas_replica"]
    assert replica["applied"]
    assert replica["values"]["tfaas_bind"] == REPLICAS[0]
    assert replica["values"]["tfaas_publisher_subs"] == ["workers-sub"]
    assert replica["values"]["tfaas_oidc_audiences"] == nodes["tfaas"]["values"]["tfaas_oidc_audiences"]
    assert "mlaas4hep" in replica["values"]["tfaas_oidc_audiences"]
    assert nodes["replica_application"]["values"]["mlaas4hep_services"] == []
    replica_rules = nodes["replica_base"]["values"]["appliance_base_private_tcp_ports"]
    assert sorted(source for rule in replica_rules for source in rule["sources"]) == sorted([FRONT, *WORKERS])


def test_replicas_without_workers_are_fed_by_the_fronts_worker(tmp_path):
    nodes = evaluate(tmp_path, {**SCALED, "num_tfaas_replicas": 2})
    front = nodes["mlaas4hep"]["values"]
    assert front["mlaas4hep_services"] == ["api", "worker"]
    assert (
        front["mlaas4hep_topology_settings"]["tfaas_replicas"]
        == "http://10.0.2.11:8083,http://10.0.2.12:8083"
    )
    assert "queue_url" not in front["mlaas4hep_topology_settings"]
    assert not nodes["redis_broker"]["applied"] and not nodes["job_store"]["applied"]
    assert nodes["tfaas_balancer"]["applied"] and not nodes["tfaas"]["applied"]


@pytest.mark.parametrize(("workers", "replicas"), [(0, 0), (2, 1)])
def test_the_evaluated_inputs_pass_the_roles_argument_specs(tmp_path, workers, replicas):
    """The Jinja values, once evaluated, have the types the roles declare."""
    from tests.tosca.orchestrator import role_of, role_options
    from tests.tosca.test_wiring import VALIDATE, ansible_env, without_defaults

    nodes = evaluate(tmp_path, {**SCALED, "num_training_workers": workers, "num_tfaas_replicas": replicas})
    plan = Deployment(TEMPLATE, {**SCALED}, injected={"iam_client": TEST_IAM_CLIENT})
    types = project_node_types()
    checked = [
        {
            "node": name,
            "spec": without_defaults(role_options(role_of(types[plan.node(name)["type"]]))),
            "provided": node["values"],
        }
        for name, node in nodes.items()
    ]
    (tmp_path / "vars.json").write_text(json.dumps({"nodes": checked}))
    (tmp_path / "validate.yml").write_text(VALIDATE)
    result = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            *("-i", "localhost,", "-c", "local", "-e", f"@{tmp_path / 'vars.json'}"),
            str(tmp_path / "validate.yml"),
        ],
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
