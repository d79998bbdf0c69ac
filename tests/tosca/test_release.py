"""The release step: scripts/release.sh builds the collection tarball and the stamped TOSCA files at one
version; the template validates offline against exactly those artifacts; the tarball installs every role."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tosca.orchestrator import (
    BASE_TYPES,
    ROOT,
    VERSION,
    imports_of,
    project_node_types,
    require_base_types,
    role_of,
)

RELEASE = ROOT / "scripts" / "release.sh"
NEW_VERSION = "9.8.7"


def release(
    out: Path, version: str, *extra: str, base_types: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLAAS4HEP_TOSCA_BASE_TYPES": str(base_types or BASE_TYPES)}
    return subprocess.run(
        ["bash", str(RELEASE), *extra, version, str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    require_base_types()
    out = tmp_path_factory.mktemp("release") / "dist"
    result = release(out, NEW_VERSION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"validates offline against the built artifacts (v{NEW_VERSION})" in result.stdout
    return out


def test_the_release_holds_the_collection_the_tosca_files_and_their_checksums(released):
    tarball = released / f"mlaas4hep-appliance-{NEW_VERSION}.tar.gz"
    assert tarball.is_file()
    for relative in ("tosca/mlaas4hep_appliance.yaml", "tosca/types/mlaas4hep_types.yaml"):
        assert (released / relative).is_file(), relative
    sums = dict(reversed(line.split("  ", 1)) for line in (released / "SHA256SUMS").read_text().splitlines())
    assert sums[tarball.name] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert "tosca/dashboard/tosca-metadata/mlaas4hep_appliance.metadata.yml" in sums


def test_every_pinned_reference_names_the_new_version(released):
    tag = f"v{NEW_VERSION}"
    types = yaml.safe_load((released / "tosca/types/mlaas4hep_types.yaml").read_text())
    template = yaml.safe_load((released / "tosca/mlaas4hep_appliance.yaml").read_text())
    metadata = yaml.safe_load(
        (released / "tosca/dashboard/tosca-metadata/mlaas4hep_appliance.metadata.yml").read_text()
    )
    assert template["metadata"]["template_version"] == NEW_VERSION
    assert any(f"/{tag}/tosca/types/mlaas4hep_types.yaml" in url for url in imports_of(template))
    assert f"/{tag}/" in metadata["metadata"]["icon"]
    for name, node_type in types["node_types"].items():
        (artifact,) = node_type["artifacts"].values()
        assert artifact["file"].endswith(
            f"/releases/download/{tag}/mlaas4hep-appliance-{NEW_VERSION}.tar.gz"
        ), name
        assert (
            f"/{tag}/tosca/playbooks/" in node_type["interfaces"]["Standard"]["configure"]["implementation"]
        )
    assert (
        types["node_types"]["tosca.nodes.mlaas4hep.MLaaS4HEP"]["properties"]["git_version"]["default"] == tag
    )
    for path in (released / "tosca").rglob("*.y*ml"):
        assert f"v{VERSION}" not in path.read_text() or VERSION == NEW_VERSION, path


def test_the_tree_is_left_alone_without_bump(released):
    assert yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"] == VERSION
    assert f"v{NEW_VERSION}" not in (ROOT / "tosca/types/mlaas4hep_types.yaml").read_text()


def test_the_collection_tarball_installs_every_role(released, tmp_path):
    installed = tmp_path / "collections"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-galaxy"),
            "collection",
            "install",
            "--offline",
            "-p",
            str(installed),
            str(released / f"mlaas4hep-appliance-{NEW_VERSION}.tar.gz"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_HOME": str(tmp_path / "home")},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    roles = installed / "ansible_collections" / "mlaas4hep" / "appliance" / "roles"
    for node_type in project_node_types().values():
        assert (roles / role_of(node_type) / "meta" / "argument_specs.yml").is_file(), role_of(node_type)
    assert not (installed / "ansible_collections" / "mlaas4hep" / "appliance" / "appliance").exists()


def test_a_release_refuses_a_bad_version_or_missing_base_types(tmp_path):
    bad = release(tmp_path / "out", "1.2")
    assert bad.returncode == 2 and "MAJOR.MINOR.PATCH" in bad.stderr
    missing = release(tmp_path / "out", NEW_VERSION, base_types=tmp_path / "absent.yaml")
    assert missing.returncode == 2 and "base types" in missing.stderr
    assert not (tmp_path / "out").exists()


def test_validation_catches_a_template_that_names_a_file_the_release_lacks(tmp_path):
    """The offline validation is live: a configure playbook missing from tosca/playbooks fails the release."""
    require_base_types()
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("scripts", "roles", "playbooks", "tosca", "galaxy.yml", "README.md"):
        subprocess.run(["cp", "-r", str(ROOT / name), str(tree / name)], check=True)
    (tree / "tosca" / "playbooks" / "tfaas.yml").unlink()
    env = {
        **os.environ,
        "MLAAS4HEP_TOSCA_BASE_TYPES": str(BASE_TYPES),
        "MLAAS4HEP_VENV": str(Path(sys.executable).parent.parent),
    }
    result = subprocess.run(
        ["bash", str(tree / "scripts" / "release.sh"), NEW_VERSION, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode != 0
    assert "tosca/playbooks/tfaas.yml" in result.stderr
