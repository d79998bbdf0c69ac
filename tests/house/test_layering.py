"""The layers import one way only (docs/architecture.md): a test reads every import of every module.

Function-level imports count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each layer and the project layers it may import (besides itself). Everything not listed is third-party.
ALLOWED: dict[str, set[str]] = {
    "servicecore": set(),
    "mlaas4hep_client": set(),
    # Test, demo and bench helpers (real servers on loopback): installed, and independent of the services.
    "mlaas4hep_devtools": set(),
    "appliance.data": {"servicecore"},
    "appliance.training": {"servicecore", "appliance.data"},
    # Batch inference applies a trained bundle to whole datasets: it reads like training does.
    "appliance.inference": {"servicecore", "appliance.data", "appliance.training"},
    "appliance.server": {"servicecore", "appliance.data", "appliance.training", "appliance.inference"},
    "appliance.cli": {
        "servicecore",
        "appliance.data",
        "appliance.training",
        "appliance.inference",
        "appliance.server",
    },
    # TFaaS serves raw-branch requests through the data layer's FeatureSpec; it knows nothing of training.
    "tfaas": {"servicecore", "appliance.data", "appliance"},
}
PROJECT = ("servicecore", "mlaas4hep_client", "mlaas4hep_devtools", "appliance", "tfaas")


def layer_of(module: str) -> str | None:
    """The most specific layer a dotted module name belongs to."""
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    if best is None and (module == "appliance" or module.startswith("appliance.")):
        return "appliance"
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    inside = path.is_relative_to(REPO)
    own = module_name(path) if inside else ""
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def project_modules() -> list[Path]:
    return sorted(p for package in PROJECT for p in (REPO / package).rglob("*.py"))


def violations(modules: list[tuple[str, Path]] | None = None) -> list[str]:
    """Every import that runs against the layers, as ``file (layer) imports module (layer)``."""
    found = []
    if modules is None:
        modules = [(module_name(path), path) for path in project_modules()]
    for name, path in modules:
        here = layer_of(name)
        if here is None or here == "appliance":  # the package's own __init__/__main__ only re-export the CLI
            continue
        for imported in sorted(imported_modules(path)):
            if not imported.startswith(PROJECT):
                continue
            target = layer_of(imported)
            if target is None or target == here or target in ALLOWED[here]:
                continue
            if imported == "appliance" and here.startswith("appliance."):  # the bare package: its own root
                continue
            # ``from appliance import x`` names the package: judge the submodule it resolves to instead
            if target == "appliance" and layer_of(imported.rpartition(".")[2]) is None:
                continue
            found.append(f"{path.name} ({here}) imports {imported} ({target})")
    return found


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [
        str(p.relative_to(REPO))
        for p in project_modules()
        if layer_of(module_name(p)) is None
        or (layer_of(module_name(p)) == "appliance" and p.name not in ("__init__.py", "__main__.py"))
    ]
    assert unplaced == []


def test_imports_run_one_way() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from appliance.server.jobs import JobQueue\n", "appliance.server.jobs"),
        ("import tfaas.api\n", "tfaas.api"),
        ("def f():\n    from appliance.training import bundle\n", "appliance.training.bundle"),
    ],
)
def test_the_reader_sees_every_kind_of_import(tmp_path: Path, source: str, expected: str) -> None:
    """The check itself must see module-level, dotted and lazy imports, or it proves nothing."""
    module = tmp_path / "probe.py"
    module.write_text(source)
    assert expected in imported_modules(module)
    assert any(expected in line for line in violations([("servicecore.probe", module)]))
