"""The node types feed the roles: every property is a role variable, and the rendered inputs pass the roles'
argument specs when the configure playbooks run as the orchestrator runs them (validation only: nothing here
changes this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tosca.orchestrator import (
    ROOT,
    TAG,
    TEMPLATE,
    TEST_ADDRESS,
    TEST_IAM_CLIENT,
    Deployment,
    collection_path,
    configure_of,
    local_copy,
    project_node_types,
    require_base_types,
    role_of,
    role_options,
)

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

# What a user types in the dashboard, beside the defaults.
DASHBOARD_INPUTS = {
    "iam_owner_sub": "8b1c7e9a-0d52-4c3f-9a55-3f2e1b7c6d10",
    "iam_allowed_groups": ["ml-users", "cms"],
    "xrootd_origin": "xrootd-cms.infn.it:1094",
    "xrootd_cache_enabled": True,
    "xrootd_cache_size": "200g",
    "xrootd_cache_purge_to": "150g",
    "tls_min_version": "TLS1.2",
}

VALIDATE = """
- name: Validate the rendered configure inputs against the roles' argument specs
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Validate one node's inputs
      ansible.builtin.validate_argument_spec:
        argument_spec: "{{ item.spec }}"
        provided_arguments: "{{ item.provided }}"
      loop: "{{ nodes }}"
      loop_control:
        label: "{{ item.node }}"
"""


def ansible_env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(collection_path(folder)),
        "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
        "ANSIBLE_HOME": str(folder / "home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }


def deployment() -> Deployment:
    require_base_types()
    return Deployment(TEMPLATE, DASHBOARD_INPUTS, injected={"iam_client": TEST_IAM_CLIENT})


@pytest.mark.parametrize("type_name", sorted(project_node_types()))
def test_properties_map_one_to_one_onto_role_variables(type_name):
    node_type = project_node_types()[type_name]
    role = role_of(node_type)
    options = role_options(role)
    inputs = configure_of(node_type)["inputs"]
    for variable, value in inputs.items():
        assert variable in options, f"{type_name}: {variable} is not a variable of role {role}"
        if "get_property" in value:
            assert value == {"get_property": ["SELF", variable.removeprefix(f"{role}_")]}, variable
        else:
            assert value == {"get_attribute": ["HOST", "public_address", 0]}, variable
    fed = {value["get_property"][1] for value in inputs.values() if "get_property" in value}
    assert fed == set(node_type["properties"]), f"{type_name}: properties not passed to the role"
    required = {name for name, option in options.items() if option.get("required")}
    assert required <= set(inputs), f"{type_name}: required variables of {role} not fed"


@pytest.mark.parametrize("type_name", sorted(project_node_types()))
def test_property_defaults_are_the_role_defaults(type_name):
    """A property left alone changes nothing: its default is the role's own (when that is a plain value)."""
    node_type = project_node_types()[type_name]
    role = role_of(node_type)
    options = role_options(role)
    for prop, spec in node_type["properties"].items():
        option = options[f"{role}_{prop}"]
        role_default = option.get("default")
        if isinstance(role_default, str) and "{{" in role_default:
            continue
        if option.get("type") == "raw":  # a number or a size: compare what xrootd reads
            assert str(float(spec["default"])) == str(float(role_default)), f"{type_name}.{prop}"
            continue
        if prop == "git_version":
            assert spec["default"] == TAG, "the application is installed from the collection's own tag"
            continue
        assert spec["default"] == role_default, f"{type_name}.{prop}"
        if "valid_values" in str(spec.get("constraints")):
            (constraint,) = spec["constraints"]
            assert constraint["valid_values"] == option["choices"], f"{type_name}.{prop}"


def test_rendered_inputs_follow_the_template_wiring():
    rendered = {name: deployment().configure_inputs(name) for name in deployment().project_nodes()}
    oauth2 = rendered["oauth2_proxy"]
    assert oauth2["oauth2_proxy_iam_client_id"] == TEST_IAM_CLIENT["client_id"]
    assert oauth2["oauth2_proxy_iam_token"] == TEST_IAM_CLIENT["registration_access_token"]
    assert oauth2["oauth2_proxy_allowed_groups"] == ["ml-users", "cms"]
    assert oauth2["oauth2_proxy_public_host"] == TEST_ADDRESS
    assert oauth2["oauth2_proxy_tls_min_version"] == "TLS1.2"
    base = rendered["appliance_base"]
    assert oauth2["oauth2_proxy_tls_cert_file"] == base["appliance_base_tls_dir"] + "/tls.crt"
    assert oauth2["oauth2_proxy_tls_key_file"] == base["appliance_base_tls_dir"] + "/tls.key"
    assert base["appliance_base_tls_common_name"] == TEST_ADDRESS
    assert base["appliance_base_public_tcp_ports"] == [4433, 8081]
    xrootd = rendered["xrootd_proxy"]
    assert xrootd["xrootd_proxy_origin"] == "xrootd-cms.infn.it:1094"
    assert (xrootd["xrootd_proxy_cache_high_watermark"], xrootd["xrootd_proxy_cache_low_watermark"]) == (
        "200g",
        "150g",
    )
    mlaas4hep, tfaas = rendered["mlaas4hep"], rendered["tfaas"]
    assert tfaas["tfaas_venv"] == mlaas4hep["mlaas4hep_install_dir"] + "/venv"
    assert tfaas["tfaas_model_dir"] == mlaas4hep["mlaas4hep_data_dir"] + "/models"
    assert tfaas["tfaas_models_group"] == mlaas4hep["mlaas4hep_models_group"]


def without_defaults(spec):
    """The argument spec minus its defaults: they are not what is checked, and some need the host's facts."""
    if isinstance(spec, dict):
        return {key: without_defaults(value) for key, value in spec.items() if key != "default"}
    return spec


def run_validation(folder: Path, rendered: dict[str, dict]) -> subprocess.CompletedProcess:
    types = project_node_types()
    template_nodes = deployment().template["node_templates"]
    nodes = [
        {
            "node": name,
            "spec": without_defaults(role_options(role_of(types[template_nodes[name]["type"]]))),
            "provided": inputs,
        }
        for name, inputs in rendered.items()
    ]
    (folder / "vars.json").write_text(json.dumps({"nodes": nodes}))
    (folder / "validate.yml").write_text(VALIDATE)
    return subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"@{folder / 'vars.json'}",
            str(folder / "validate.yml"),
        ],
        capture_output=True,
        text=True,
        env=ansible_env(folder),
        timeout=300,
        check=False,
    )


def test_rendered_inputs_pass_the_roles_argument_specs(tmp_path):
    plan = deployment()
    rendered = {name: plan.configure_inputs(name) for name in plan.project_nodes()}
    result = run_validation(tmp_path, rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok=1" in result.stdout


def test_the_argument_check_catches_a_miswired_input(tmp_path):
    plan = deployment()
    rendered = {name: plan.configure_inputs(name) for name in plan.project_nodes()}
    rendered["xrootd_proxy"]["xrootd_proxy_port"] = "root://not-a-port"
    rendered["oauth2_proxy"]["oauth2_proxy_tls_min_version"] = "SSL3"
    result = run_validation(tmp_path, rendered)
    assert result.returncode != 0
    assert "xrootd_proxy_port" in result.stdout and "oauth2_proxy_tls_min_version" in result.stdout


def test_configure_playbooks_resolve_their_roles_in_the_installed_collection(tmp_path):
    """As on the VM: the collection installed, each playbook run with its node's inputs as variables."""
    plan = deployment()
    types = project_node_types()
    for name in plan.project_nodes():
        node_type = types[plan.node(name)["type"]]
        playbook = local_copy(configure_of(node_type)["implementation"])
        variables = tmp_path / f"{name}.json"
        variables.write_text(json.dumps(plan.configure_inputs(name)))
        result = subprocess.run(
            [
                ANSIBLE_PLAYBOOK,
                "-i",
                "localhost,",
                "-c",
                "local",
                "-e",
                f"@{variables}",
                "--list-tasks",
                str(playbook),
            ],
            capture_output=True,
            text=True,
            env=ansible_env(tmp_path),
            timeout=300,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        role = role_of(node_type)
        assert f"mlaas4hep.appliance.{role} :" in result.stdout, result.stdout


def test_one_access_policy_reaches_the_door_and_both_services():
    """Owner, groups, issuer and the IAM client's id: the same at the door and in both services."""
    plan = deployment()
    rendered = {name: plan.configure_inputs(name) for name in plan.project_nodes()}
    door = rendered["oauth2_proxy"]
    assert door["oauth2_proxy_owner_sub"] == DASHBOARD_INPUTS["iam_owner_sub"]
    assert door["oauth2_proxy_open_to_all_users"] is False
    for role in ("mlaas4hep", "tfaas"):
        service = rendered[role]
        assert service[f"{role}_oidc_issuer"] == door["oauth2_proxy_issuer_url"] == plan.inputs["iam_url"]
        assert service[f"{role}_owner_sub"] == door["oauth2_proxy_owner_sub"]
        assert service[f"{role}_allowed_groups"] == door["oauth2_proxy_allowed_groups"] == ["ml-users", "cms"]
        assert service[f"{role}_oidc_audiences"] == ["mlaas4hep", TEST_IAM_CLIENT["client_id"]]
        assert service[f"{role}_open_to_all_users"] is False


@pytest.mark.parametrize("role", ["oauth2_proxy", "mlaas4hep", "tfaas"])
def test_an_open_deployment_is_refused_before_anything_naming_the_input(tmp_path, role):
    """No owner (the dashboard did not fill it) and no group: each node's role refuses in its preflight."""
    from tests.roles.conftest import run_preflight

    plan = Deployment(
        TEMPLATE,
        {**DASHBOARD_INPUTS, "iam_owner_sub": "", "iam_allowed_groups": []},
        injected={"iam_client": TEST_IAM_CLIENT},
    )
    variables = plan.configure_inputs(role)  # each node is named after its role
    if role == "mlaas4hep":
        variables |= {"mlaas4hep_git_version": "v0.1.0"}
    result = run_preflight(tmp_path, role, variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert f"{role}_owner_sub is empty" in output and "iam_owner_sub" in output, output[-3000:]
