"""What the INDIGO orchestrator does with our TOSCA files, done here offline.

- ``load_template`` parses and validates a template with tosca-parser, its imports served from this checkout
  (our types) and from ../shared/reference/tosca-types (the INFN Cloud base types), never from the network.
- ``render_configure_inputs`` computes each node's ``Standard.configure`` inputs: the Ansible variables the
  orchestrator hands to the configure playbook (get_input, get_property, get_attribute and concat resolved).
- ``collection_path`` lays the checkout out as the installed collection artifact (mlaas4hep.appliance), so
  ansible resolves the playbooks' roles as it would on the VM.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOSCA = ROOT / "tosca"
TEMPLATE = TOSCA / "mlaas4hep_appliance.yaml"
TYPES = TOSCA / "types" / "mlaas4hep_types.yaml"
BASE_TYPES = ROOT.parent / "shared" / "reference" / "tosca-types" / "basic_types.yaml"

# The repository and the release every URL of tosca/ points at: galaxy.yml's version, tag v<version>
# (scripts/release.sh stamps both; docs/tosca.md, "Releasing").
REPOSITORY = "github.com/mlaas4hep/mlaas4hep-appliance"
VERSION = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
TAG = f"v{VERSION}"
RAW_BASE = f"https://raw.githubusercontent.com/{REPOSITORY.removeprefix('github.com/')}/{TAG}/"
COLLECTION_ARTIFACT = f"https://{REPOSITORY}/releases/download/{TAG}/mlaas4hep-appliance-{VERSION}.tar.gz"
COLLECTION = ("mlaas4hep", "appliance")
BASE_TYPES_URL = "https://baltig.infn.it/infn-cloud/tosca-types/raw/v3.4.0/tosca_types/base/basic_types.yaml"

# What the orchestrator knows only at deployment: the VM's address, the IAM client it registered, and the
# private addresses of every VM of each compute node (the front's, then one per VM of a scalable count).
TEST_ADDRESS = "192.0.2.10"
TEST_PRIVATE = {"vm_server": "10.0.0.10", "training_worker_server": "10.0.1.{}", "tfaas_server": "10.0.2.{}"}
TEST_IAM_CLIENT = {"client_id": "0f3c-test-client", "registration_access_token": "eyJ.test.registration"}


def local_copy(url: str) -> Path:
    """The file in this checkout (or ../shared) that an import or implementation URL names."""
    if url == BASE_TYPES_URL:
        return BASE_TYPES
    if url.startswith(RAW_BASE):
        return ROOT / url.removeprefix(RAW_BASE)
    raise AssertionError(f"{url} is neither the pinned INFN Cloud types nor this repository at {TAG}")


def require_base_types() -> Path:
    if not BASE_TYPES.exists():
        pytest.skip(f"the INFN Cloud base types are not at {BASE_TYPES} (../shared/reference is absent)")
    return BASE_TYPES


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def imports_of(document: Mapping[str, Any]) -> list[str]:
    urls = []
    for entry in document.get("imports", []):
        urls.extend(entry.values() if isinstance(entry, dict) else [entry])
    return urls


def load_template(path: Path, parsed_params: Mapping[str, Any] | None = None):
    """tosca-parser's ToscaTemplate of ``path``; its ``local_defs`` hook maps import URLs to local files."""
    from toscaparser.tosca_template import ToscaTemplate

    require_base_types()
    urls = imports_of(read_yaml(path)) + imports_of(read_yaml(TYPES))
    local_defs = {url: str(local_copy(url)) for url in urls}
    return ToscaTemplate(str(path), parsed_params=dict(parsed_params or {}), local_defs=local_defs)


def node_types() -> dict[str, dict[str, Any]]:
    """Our node types and the INFN Cloud ones, by name."""
    types = dict(read_yaml(require_base_types())["node_types"])
    types.update(read_yaml(TYPES)["node_types"])
    return types


def project_node_types() -> dict[str, dict[str, Any]]:
    return dict(read_yaml(TYPES)["node_types"])


def configure_of(node_type: Mapping[str, Any]) -> dict[str, Any]:
    return node_type["interfaces"]["Standard"]["configure"]


def role_of(node_type: Mapping[str, Any]) -> str:
    """The role a node type's configure playbook applies (the playbook's single role, FQCN stripped)."""
    playbook = read_yaml(local_copy(configure_of(node_type)["implementation"]))
    (play,) = playbook
    (entry,) = play["roles"]
    namespace, collection, role = entry["role"].split(".")
    assert (namespace, collection) == COLLECTION, entry["role"]
    return role


def role_options(role: str) -> dict[str, dict[str, Any]]:
    specs = read_yaml(ROOT / "roles" / role / "meta" / "argument_specs.yml")
    return specs["argument_specs"]["main"]["options"]


class Deployment:
    """One deployment of a template: input values, node properties, and the functions between them."""

    def __init__(
        self,
        template_path: Path,
        inputs: Mapping[str, Any] | None = None,
        injected: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.template = read_yaml(template_path)["topology_template"]
        self.types = node_types()
        declared = self.template.get("inputs", {})
        unknown = set(inputs or {}) - set(declared)
        assert not unknown, f"inputs the template does not declare: {unknown}"
        self.inputs = {name: spec.get("default") for name, spec in declared.items()}
        self.inputs.update(inputs or {})
        self.injected = {node: dict(values) for node, values in (injected or {}).items()}

    def node(self, name: str) -> dict[str, Any]:
        return self.template["node_templates"][name]

    def type_chain(self, type_name: str) -> list[dict[str, Any]]:
        chain = []
        while type_name in self.types:
            chain.append(self.types[type_name])
            type_name = self.types[type_name].get("derived_from", "")
        return chain

    def properties(self, name: str) -> dict[str, Any]:
        """Type defaults, then the template's values, then what the orchestrator injects at deployment."""
        values: dict[str, Any] = {}
        for node_type in reversed(self.type_chain(self.node(name)["type"])):
            for prop, spec in node_type.get("properties", {}).items():
                if "default" in spec:
                    values[prop] = copy.deepcopy(spec["default"])
        values.update(copy.deepcopy(self.node(name).get("properties", {})))
        values.update(self.injected.get(name, {}))
        return values

    def host_of(self, name: str) -> str:
        for requirement in self.node(name).get("requirements", []):
            if "host" in requirement:
                return requirement["host"]
        raise AssertionError(f"node {name} has no host")

    def resolve(self, value: Any, node: str) -> Any:
        if isinstance(value, list):
            return [self.resolve(item, node) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, args),) = value.items()
            if function == "get_input":
                return self.resolve(self.inputs[args], node)
            if function == "get_property":
                owner = node if args[0] == "SELF" else args[0]
                props = self.properties(owner)
                assert args[1] in props, f"{owner} has no property {args[1]} (from {node})"
                return self.resolve(props[args[1]], owner)
            if function == "get_attribute":
                owner = {"SELF": node, "HOST": self.host_of(node)}.get(args[0], args[0])
                assert self.node(owner)["type"] == "tosca.nodes.indigo.Compute", f"attribute of {owner}"
                if args[1:] == ["private_address"]:  # every VM of the node: a list, empty with count 0
                    return self.private_addresses(owner)
                assert args[1:] in (["public_address", 0], ["private_address", 0]), args
                if args[1] == "private_address":
                    return self.private_addresses(owner)[0]
                return TEST_ADDRESS
            if function == "concat":
                return "".join(str(self.resolve(part, node)) for part in args)
        return {key: self.resolve(item, node) for key, item in value.items()}

    def count(self, compute: str) -> int:
        """The number of VMs of a compute node (INDIGO's scalable capability; 1 without it)."""
        scalable = self.node(compute).get("capabilities", {}).get("scalable", {}).get("properties", {})
        return int(self.resolve(scalable.get("count", 1), compute))

    def private_addresses(self, compute: str) -> list[str]:
        pattern = TEST_PRIVATE[compute]
        if "{}" not in pattern:
            return [pattern]
        # A node hosted on a VM of a scalable compute is rendered for its first VM.
        return [pattern.format(11 + index) for index in range(self.count(compute))]

    def configure_inputs(self, name: str) -> dict[str, Any]:
        """The variables of ``name``'s configure playbook, as the orchestrator renders them."""
        inputs: dict[str, Any] = {}
        for node_type in reversed(self.type_chain(self.node(name)["type"])):
            configure = node_type.get("interfaces", {}).get("Standard", {}).get("configure", {})
            inputs.update(configure.get("inputs", {}) if isinstance(configure, dict) else {})
        template_configure = self.node(name).get("interfaces", {}).get("Standard", {}).get("configure", {})
        inputs.update(template_configure.get("inputs", {}))
        return {variable: self.resolve(value, name) for variable, value in inputs.items()}

    def project_nodes(self) -> list[str]:
        """Our nodes the orchestrator deploys: those on a compute node with at least one VM."""
        ours = project_node_types()
        return [
            name
            for name, node in self.template["node_templates"].items()
            if node["type"] in ours and self.count(self.host_of(name)) > 0
        ]


def collection_path(folder: Path) -> Path:
    """A collections path where mlaas4hep.appliance is this checkout, as the artifact puts it on the VM."""
    namespace, name = COLLECTION
    target = folder / "ansible_collections" / namespace / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(ROOT, target_is_directory=True)
    return folder
