"""Fixtures any test can ask for: real XRootD servers and generated ROOT files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.xrootd import XRootDSite, xrootd_site

# Tests must not grab a GPU or spam TensorFlow's start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The tests start servers, workers and jobs with sys.executable. Run as .venv/bin/python, the link that
# scripts/bootstrap.sh leaves in a clone, it names a path inside the clone, which an unprivileged job cannot
# reach when the clone is private (/root is 0700): use the venv's real folder (the interpreter link itself
# must stay, since the venv is known by its folder).
sys.executable = str(Path(sys.executable).parent.resolve() / Path(sys.executable).name)

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
    from appliance.data.synthetic import SAMPLE_SCHEMA, write_root_file, write_sample_pair

    base = tmp_path_factory.mktemp("samples")
    return {
        **write_sample_pair(base),
        "background_twin": write_root_file(
            base / "background_twin.root", 3000, shift=0.0, seed=3, schema=SAMPLE_SCHEMA
        ),
    }


@pytest.fixture(scope="session")
def nanoaod_sample() -> Path:
    if not NANOAOD_SAMPLE.exists():
        pytest.skip(f"the CMS NanoAOD sample is not at {NANOAOD_SAMPLE} (../shared/data beside the checkout)")
    return NANOAOD_SAMPLE
