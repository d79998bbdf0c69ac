"""TOSCA's num_gpus: the VM asks the orchestrator for a GPU flavour with it, and the MLaaS4HEP node passes the
same number to the role, which then installs the GPU builds (tests/roles/test_gpu_role.py)."""

from __future__ import annotations

import pytest

from tests.tosca.orchestrator import TEMPLATE, TEST_IAM_CLIENT, Deployment, read_yaml, require_base_types
from tests.tosca.test_wiring import DASHBOARD_INPUTS


@pytest.mark.parametrize("num_gpus", [None, 0, 2])
def test_num_gpus_selects_the_flavour_and_reaches_the_role(num_gpus):
    require_base_types()
    inputs = dict(DASHBOARD_INPUTS) if num_gpus is None else {**DASHBOARD_INPUTS, "num_gpus": num_gpus}
    plan = Deployment(TEMPLATE, inputs, injected={"iam_client": TEST_IAM_CLIENT})
    expected = 0 if num_gpus is None else num_gpus
    assert plan.configure_inputs("mlaas4hep")["mlaas4hep_num_gpus"] == expected
    host = read_yaml(TEMPLATE)["topology_template"]["node_templates"]["vm_server"]["capabilities"]["host"]
    assert plan.resolve(host["properties"]["num_gpus"], "vm_server") == expected
