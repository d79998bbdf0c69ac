"""Fixtures any test can ask for: real XRootD servers and generated ROOT files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.xrootd import XRootDSite, xrootd_site

# Tests must not grab a GPU or spam TensorFlow's start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NANOAOD_SAMPLE = SHARED_DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"


@pytest.fixture(scope="session")
def xrootd() -> Iterator[XRootDSite]:
    """A running XRootD origin with a direct proxy and a forwarding proxy in front of it."""
    with xrootd_site() as site:
        yield site


@pytest.fixture(scope="session")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small generated signal and background files (NanoAOD-like schema, TTrees)."""
    from appliance.data.synthetic import SyntheticSchema, write_root_file

    base = tmp_path_factory.mktemp("samples")
    schema = SyntheticSchema(n_flat=8, n_jagged=6)
    return {
        "signal": write_root_file(base / "signal.root", 3000, shift=1.0, seed=1, schema=schema),
        "background": write_root_file(base / "background.root", 5000, shift=0.0, seed=2, schema=schema),
        "background_twin": write_root_file(
            base / "background_twin.root", 3000, shift=0.0, seed=3, schema=schema
        ),
    }


@pytest.fixture(scope="session")
def nanoaod_sample() -> Path:
    if not NANOAOD_SAMPLE.exists():
        pytest.skip(f"the CMS NanoAOD sample is not at {NANOAOD_SAMPLE} (../shared/data beside the checkout)")
    return NANOAOD_SAMPLE
