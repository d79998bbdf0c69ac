"""The TOSCA template and node types validate with tosca-parser, offline, and point at one release."""

from __future__ import annotations

import re

import pytest

from tests.tosca.orchestrator import (
    BASE_TYPES_URL,
    COLLECTION_ARTIFACT,
    RAW_BASE,
    TEMPLATE,
    TOSCA,
    TYPES,
    imports_of,
    load_template,
    local_copy,
    project_node_types,
    read_yaml,
)


def test_template_validates_offline():
    template = load_template(TEMPLATE)
    nodes = {node.name: node.type for node in template.nodetemplates}
    assert nodes == {
        "vm_server": "tosca.nodes.indigo.Compute",
        "iam_client": "tosca.nodes.indigo.iam.client",
        "appliance_base": "tosca.nodes.mlaas4hep.ApplianceBase",
        "xrootd_proxy": "tosca.nodes.mlaas4hep.XRootDProxy",
        "mlaas4hep": "tosca.nodes.mlaas4hep.MLaaS4HEP",
        "tfaas": "tosca.nodes.mlaas4hep.TFaaS",
        "oauth2_proxy": "tosca.nodes.mlaas4hep.OAuth2Proxy",
        "redis_broker": "tosca.nodes.mlaas4hep.RedisBroker",
        "job_store": "tosca.nodes.mlaas4hep.JobStorePostgres",
        "jobs_share": "tosca.nodes.mlaas4hep.JobsShareNFS",
        "tfaas_balancer": "tosca.nodes.mlaas4hep.TFaaSBalancer",
        "training_worker_server": "tosca.nodes.indigo.Compute",
        "worker_base": "tosca.nodes.mlaas4hep.ApplianceBase",
        "worker_jobs_share": "tosca.nodes.mlaas4hep.JobsShareNFS",
        "training_worker": "tosca.nodes.mlaas4hep.MLaaS4HEP",
        "tfaas_server": "tosca.nodes.indigo.Compute",
        "replica_base": "tosca.nodes.mlaas4hep.ApplianceBase",
        "replica_application": "tosca.nodes.mlaas4hep.MLaaS4HEP",
        "tfaas_replica": "tosca.nodes.mlaas4hep.TFaaS",
    }
    assert {output.name for output in template.outputs} == {"mlaas4hep_endpoint", "tfaas_endpoint", "node_ip"}


def test_validation_rejects_a_bad_input():
    """The check above is live: tosca-parser checks input values against their types (not their constraints,
    which test_dashboard checks against the dashboard's choices)."""
    from toscaparser.common.exception import ValidationError

    with pytest.raises(ValidationError, match='"four" is not an integer'):
        load_template(TEMPLATE, parsed_params={"num_cpus": "four"})


def test_the_dask_scheduler_input_is_an_ip_address_and_port_or_empty():
    """The dashboard and the orchestrator check constraints (tosca-parser does not): the pattern itself."""
    declared = read_yaml(TEMPLATE)["topology_template"]["inputs"]["dask_scheduler"]
    assert declared["default"] == ""
    (pattern,) = [c["pattern"] for c in declared["constraints"]]
    for good in ("", "tcp://10.0.3.5:8786", "tcp://[fd00::5]:8786"):
        assert re.fullmatch(pattern, good), good
    for bad in ("10.0.3.5:8786", "tcp://sched.example:8786", "tls://10.0.3.5:8786", "tcp://10.0.3.5"):
        assert not re.fullmatch(pattern, bad), bad


def test_the_vm_opens_the_fronts_and_ssh_only():
    vm = read_yaml(TEMPLATE)["topology_template"]["node_templates"]["vm_server"]
    ports = vm["capabilities"]["endpoint"]["properties"]["ports"]
    assert sorted(port["source"] for port in ports.values()) == [22, 4433, 8081]
    assert {port["protocol"] for port in ports.values()} == {"tcp"}
    host = vm["capabilities"]["host"]["properties"]
    assert set(host) == {"num_cpus", "mem_size", "disk_size", "num_gpus", "gpu_model"}
    assert all(value == {"get_input": name} for name, value in host.items())


# Where each project node runs: the front VM, or every VM of the training workers' or the replicas' count.
HOSTS = {
    "training_worker_server": {"worker_base", "worker_jobs_share", "training_worker"},
    "tfaas_server": {"replica_base", "replica_application", "tfaas_replica"},
}


def test_every_project_node_is_hosted_on_its_vm():
    nodes = read_yaml(TEMPLATE)["topology_template"]["node_templates"]
    for name, node in nodes.items():
        if node["type"].startswith("tosca.nodes.mlaas4hep."):
            host = next((vm for vm, names in HOSTS.items() if name in names), "vm_server")
            assert {"host": host} in node["requirements"], name


@pytest.mark.parametrize(
    ("compute", "count"),
    [("training_worker_server", "num_training_workers"), ("tfaas_server", "num_tfaas_replicas")],
)
def test_workers_and_replicas_are_counted_vms_on_the_private_network(compute, count):
    """INDIGO's scalable capability, from an input whose default (0) keeps the one VM of before."""
    template = read_yaml(TEMPLATE)["topology_template"]
    vm = template["node_templates"][compute]
    assert vm["capabilities"]["scalable"]["properties"]["count"] == {"get_input": count}
    assert template["inputs"][count] == {**template["inputs"][count], "type": "integer", "default": 0}
    assert vm["capabilities"]["endpoint"]["properties"] == {"network_name": "PRIVATE"}
    front = template["node_templates"]["vm_server"]
    assert front["capabilities"]["scalable"]["properties"]["count"] == 1
    # The same VM size as the front.
    assert vm["capabilities"]["host"] == front["capabilities"]["host"]


def test_template_validates_with_workers_and_replicas():
    template = load_template(TEMPLATE, parsed_params={"num_training_workers": 3, "num_tfaas_replicas": 2})
    assert {node.name for node in template.nodetemplates} >= {"training_worker", "tfaas_replica"}


@pytest.mark.parametrize("document", [TEMPLATE, TYPES], ids=lambda path: path.name)
def test_imports_are_pinned(document):
    for url in imports_of(read_yaml(document)):
        assert url == BASE_TYPES_URL or url.startswith(RAW_BASE), url
        assert local_copy(url).is_file(), url


def test_node_types_install_the_pinned_collection_and_run_playbooks_kept_here():
    for name, node_type in project_node_types().items():
        assert node_type["derived_from"] == "tosca.nodes.SoftwareComponent", name
        (artifact,) = node_type["artifacts"].values()
        expected = {"file": COLLECTION_ARTIFACT, "type": "tosca.artifacts.AnsibleGalaxy.collection"}
        assert artifact == expected, name
        implementation = node_type["interfaces"]["Standard"]["configure"]["implementation"]
        playbook = local_copy(implementation)
        assert playbook.parent == TOSCA / "playbooks" and playbook.is_file(), implementation
        (play,) = read_yaml(playbook)
        assert play["hosts"] == "localhost" and play["connection"] == "local", playbook


def test_every_pinned_url_names_the_same_release():
    """One release everywhere: a bump that misses a file fails here."""
    texts = [path.read_text() for path in TOSCA.rglob("*.y*ml")]
    pinned = re.compile(r"mlaas4hep-appliance(?:\.git|/releases/download)?[/,@](v[0-9][^/\s\"']*)")
    tags = {tag for text in texts for tag in pinned.findall(text)}
    assert tags == {RAW_BASE.rstrip("/").rsplit("/", 1)[1]}


def test_the_default_image_is_a_tested_platform():
    """Debian 12 by default, and no OS the roles are not converged on (Molecule: Debian 12 and 13)."""
    inputs = read_yaml(TEMPLATE)["topology_template"]["inputs"]
    assert (inputs["os_distribution"]["default"], str(inputs["os_version"]["default"])) == ("debian", "12")
    assert inputs["os_distribution"]["constraints"] == [{"valid_values": ["debian"]}]
