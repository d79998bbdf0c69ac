"""End to end over the bundle contract: a bundle trained by appliance.training, served from raw branches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import uproot

from appliance.data.features import FeatureSpec
from appliance.training.run import run_training
from tests.tfaas.bundles import reference_predict
from tests.tfaas.server import tfaas_server
from tests.training.conftest import write_workflow

pytestmark = pytest.mark.slow


def test_trained_bundle_serves_raw_branch_values_like_the_training_transform(
    tmp_path: Path, sample_files: dict[str, Path]
) -> None:
    workflow = write_workflow(
        tmp_path / "workflow",
        [sample_files["signal"], sample_files["background"]],
        [1, 0],
        params={"epochs": 1},
    )
    result = run_training(
        **workflow.kwargs(fout=tmp_path / "out" / "alice.higgs", publish=tmp_path / "models")
    )
    bundle = Path(result["published"])
    params = (bundle / "params.json").read_text()
    spec = FeatureSpec.from_dict(json.loads(params)["features"])

    with uproot.open(sample_files["signal"]) as handle:
        tree = handle[next(k for k, v in handle.classnames().items() if v == "TTree").split(";")[0]]
        arrays = tree.arrays(spec.input_branches, entry_stop=20)
    raw = {name: arrays[name].tolist() for name in spec.input_branches}
    expected = reference_predict(bundle, spec.transform({n: arrays[n] for n in spec.input_branches}))

    with tfaas_server(tmp_path / "models", tmp_path, workers=1) as server:
        answer = server.post("/json", json={"model": "alice.higgs", "raw": raw})
        assert answer.status_code == 200, answer.text
        assert np.allclose(answer.json(), expected, rtol=1e-5, atol=1e-6)
        vectors = spec.transform({n: arrays[n] for n in spec.input_branches})
        by_values = server.post("/v1/models/alice.higgs:predict", json={"instances": vectors.tolist()})
        assert np.allclose(by_values.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
