"""Fixtures of the TFaaS tests: bundles built once per session, fresh repositories, real gunicorn servers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tfaas import bundles
from tests.tfaas.server import TfaasServer, tfaas_server

RAW_FEATURES = {
    "format": "mlaas4hep-features/1",
    "normalisation": "minmax",
    "nan_value": 0.0,
    "mask": False,
    "new_branches": {},
    "flat": [{"name": "MET_pt", "kind": "flat", "min": 0.0, "max": 100.0}],
    "jagged": [{"name": "Jet_pt", "kind": "jagged", "min": 0.0, "max": 200.0, "length": 2, "max_length": 5}],
    "dataset": {},
}


@pytest.fixture(scope="session")
def bundle_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Complete bundles (not yet in any repository), each built once for the session."""
    base = tmp_path_factory.mktemp("bundles")
    return {
        "small_v1": bundles.write_bundle(
            base / "small_v1", bundles.mlp(4, (8,), 2, seed=1), "small", 4, ["a", "b"]
        ),
        "small_v2": bundles.write_bundle(
            base / "small_v2", bundles.mlp(4, (8,), 2, seed=2), "small", 4, ["a", "b"]
        ),
        "legacy": bundles.write_bundle(
            base / "legacy", bundles.mlp(3, (5,), 1, seed=3), "legacy", 3, ["signal"], old_keys=True
        ),
        "tfonly": bundles.write_bundle(base / "tfonly", bundles.residual(4, seed=4), "tfonly", 4, ["x", "y"]),
        "raw": bundles.write_bundle(
            base / "raw",
            bundles.mlp(3, (6,), 1, seed=5),
            "alice.raw",
            3,
            ["signal"],
            {"features": RAW_FEATURES},
        ),
    }


def populate(repo: Path, sources: dict[str, Path]) -> Path:
    """small (version 1), legacy (original-style folder), tfonly (version 1), alice.raw (version 1)."""
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copytree(sources["small_v1"], repo / "small" / "1")
    shutil.copytree(sources["legacy"], repo / "legacy")
    shutil.copytree(sources["tfonly"], repo / "tfonly" / "1")
    shutil.copytree(sources["raw"], repo / "alice.raw" / "1")
    return repo


@pytest.fixture
def repo(tmp_path: Path, bundle_sources: dict[str, Path]) -> Path:
    return populate(tmp_path / "models", bundle_sources)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, bundle_sources: dict[str, Path]
) -> Iterator[TfaasServer]:
    """A TFaaS under gunicorn (2 workers, batching on) on a repository this module's tests do not change."""
    base = tmp_path_factory.mktemp("served")
    repo = populate(base / "models", bundle_sources)
    with tfaas_server(repo, base, workers=2, env={"TFAAS_MAX_BODY_BYTES": "200000"}) as running:
        running.warm("small", "legacy", "tfonly", "alice.raw")
        yield running
