"""The scaling tests share the server tests' fixtures (XRootD, samples, data directories)."""

from tests.server.conftest import data_dir, make_app, remote_samples  # noqa: F401
