"""``mlaas4hep predict --scheduler`` on a real Dask scheduler and worker, separate processes: the worker gets
the bundle's bytes (never its path) and reads the files through the XRootD proxy; the friend trees equal the
local cluster's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uproot

from appliance.inference.predict import PredictOptions, run_predict
from tests.support.dask_cluster import DaskCluster, dask_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as running:
        yield running


def test_predict_on_a_scheduler_equals_the_local_cluster(trained, xrootd, cluster, tmp_path):
    urls = [
        xrootd.proxy_url(xrootd.add_file(trained.inputs["ttree"][n], f"dask/{n}.root"))
        for n in ("signal", "background")
    ]
    files = tmp_path / "files.txt"
    files.write_text("".join(f"{url}\n" for url in urls))
    local = run_predict(urls, trained.bundle, tmp_path / "local", PredictOptions(task_entries=1100))
    argv = [
        sys.executable, "-m", "appliance", "predict", "--files", str(files), "--bundle", str(trained.bundle),
        "--fout", str(tmp_path / "remote"), "--scheduler", cluster.address, "--task-entries", "1100",
        "--step", "400",
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    remote = json.loads((tmp_path / "remote" / "predict.json").read_text())
    assert remote["engine"] == {
        "scheduler": cluster.address,
        "bundle": "shipped",
        "workers": 1,
        "threads": 2,
    }
    assert local["engine"]["scheduler"] == "local" and local["engine"]["bundle"] == "path"
    for name in ("signal", "background"):
        with uproot.open(trained.inputs["ttree"][name]) as handle:
            entries = handle["Events"].num_entries
        trees = {
            where: uproot.open(tmp_path / where / f"{name}_scores.root")["scores"].arrays(library="np")
            for where in ("local", "remote")
        }
        assert len(trees["remote"]["entry"]) == len(trees["local"]["entry"]) == entries
        np.testing.assert_array_equal(trees["remote"]["passed"], trees["local"]["passed"])
        np.testing.assert_allclose(
            trees["remote"]["score_1"], trees["local"]["score_1"], rtol=1e-5, atol=1e-6
        )
        assert 0 < trees["remote"]["passed"].sum() < entries
    # The worker scored from its own unpacked copy, in its temporary directory, not from the bundle's path.
    unpacked = cluster.unpacked_bundles()
    assert len(unpacked) == 1 and unpacked[0] != str(trained.bundle)
    assert json.loads((Path(unpacked[0]) / "params.json").read_text()) == json.loads(
        (trained.bundle / "params.json").read_text()
    )


def test_a_shipped_bundle_is_unpacked_inside_its_own_directory_only(trained, tmp_path):
    from appliance.inference.scoring import ShippedBundle, _unpack, ship_bundle
    from servicecore.errors import BadInputError

    shipped = ship_bundle(trained.bundle)
    assert ship_bundle(trained.bundle).digest == shipped.digest  # the same bundle, the same digest
    directory = Path(_unpack(shipped))
    assert _unpack(shipped) == str(directory)  # once per process
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file()) == sorted(
        p.relative_to(trained.bundle) for p in trained.bundle.rglob("*") if p.is_file()
    )
    for name in ("../escape", "/etc/escape", "a/../../escape"):
        with pytest.raises(BadInputError, match="not a path inside the bundle"):
            _unpack(ShippedBundle(f"evil-{name}", ((name, b"x"),)))
    assert not (directory.parent / "escape").exists()
