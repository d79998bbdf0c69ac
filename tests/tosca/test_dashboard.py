"""The INFN Cloud dashboard files describe exactly the template's inputs, with matching types and choices."""

from __future__ import annotations

import pytest

from tests.tosca.orchestrator import TEMPLATE, TOSCA, local_copy, read_yaml

DASHBOARD = TOSCA / "dashboard"
PARAMETERS = DASHBOARD / "tosca-parameters" / f"{TEMPLATE.stem}.parameters.yml"
METADATA = DASHBOARD / "tosca-metadata" / f"{TEMPLATE.stem}.metadata.yml"
DASHBOARD_TYPES = {"text", "integer", "boolean", "select", "password", "userinfo", "list"}
# The dashboard widget each TOSCA input type may be shown with.
WIDGETS = {
    "integer": {"integer"},
    "boolean": {"boolean"},
    "string": {"text", "select", "password", "userinfo"},
    "scalar-unit.size": {"text", "select"},
    "version": {"text", "select"},
    "list": {"list"},
}


def template_inputs() -> dict[str, dict]:
    return read_yaml(TEMPLATE)["topology_template"]["inputs"]


def parameters() -> dict:
    return read_yaml(PARAMETERS)


def test_every_input_is_shown_once_and_nothing_else():
    assert set(parameters()["inputs"]) == set(template_inputs())


@pytest.mark.parametrize("name", sorted(template_inputs()))
def test_each_input_has_a_widget_of_its_type_a_tab_and_a_description(name):
    shown = parameters()["inputs"][name]
    declared = template_inputs()[name]
    assert shown["type"] in DASHBOARD_TYPES
    assert shown["type"] in WIDGETS[declared["type"]], f"{name}: {declared['type']} shown as {shown['type']}"
    assert shown["tab"] in parameters()["tabs"]
    assert shown["description"].strip()
    choices = [c["valid_values"] for c in declared.get("constraints", []) if "valid_values" in c]
    if choices:
        assert shown["type"] == "select" and shown["options"] == choices[0], name
    if shown["type"] == "select":
        assert choices, f"{name}: a select needs the template's valid_values"
        assert declared["default"] in shown["options"]


def test_every_tab_is_used():
    used = {shown["tab"] for shown in parameters()["inputs"].values()}
    assert used == set(parameters()["tabs"])


def test_the_owner_is_the_logged_in_user_and_owns_the_iam_client():
    shown = parameters()["inputs"]["iam_owner_sub"]
    assert (shown["type"], shown["attribute"]) == ("userinfo", "sub")
    iam_client = read_yaml(TEMPLATE)["topology_template"]["node_templates"]["iam_client"]
    assert iam_client["properties"]["owner"] == {"get_input": "iam_owner_sub"}


def test_metadata_names_the_template_and_its_icon():
    card = read_yaml(METADATA)["metadata"]
    template_metadata = read_yaml(TEMPLATE)["metadata"]
    assert card["template_name"] == template_metadata["template_name"]
    assert card["display_name"] == template_metadata["display_name"]
    assert card["description"].strip()
    icon = local_copy(card["icon"])
    assert icon.is_file() and icon.read_text().lstrip().startswith("<svg"), icon
