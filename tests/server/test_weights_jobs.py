"""Weights and regression targets through the API and a real worker (issue 17): bad settings refused at
submission, a weighted regression job published with its residual plot served instead of a ROC."""

from __future__ import annotations

import pytest
import requests

from tests.server.conftest import TINY_PARAMS, api_process, follow_job, http_getter, worker_process, workflow

pytestmark = pytest.mark.slow
ALICE = {"X-Forwarded-User": "alice"}
REGRESSION_MODEL = {
    "layers": [{"type": "Dense", "units": 8, "activation": "relu"}, {"type": "Dense", "units": 1}],
    "loss": "mse",
    "optimizer": {"name": "adam", "learning_rate": 0.01},
}


def test_weighted_regression_job_and_bad_weight_settings(data_dir, tmp_path, remote_samples):
    with (
        api_process(data_dir, tmp_path / "api.log") as url,
        worker_process(data_dir, tmp_path / "w.log", *remote_samples.values()),
    ):
        for params, words in (
            ({"weight": "MET_pt *"}, ("weight", "cannot parse")),
            ({"weight": "MET_pt", "cross_section": [1.0]}, ("cross_section has 1 value", "2 file")),
            ({"target": ["MET_sumEt"], "class_weight": "balanced"}, ("class_weight",)),
        ):
            body = workflow(remote_samples, params={**TINY_PARAMS, **params})
            response = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
            assert response.status_code == 400, response.text
            assert all(word in response.json()["error"] for word in words), response.text

        params = {**TINY_PARAMS, "target": ["MET_sumEt"], "weight": "1 + abs(MET_phi)", "epochs": 2}
        body = workflow(remote_samples, name="energy", params=params, model=REGRESSION_MODEL, labels=[0, 0])
        response = requests.post(f"{url}/jobs", json=body, headers=ALICE, timeout=60)
        assert response.status_code == 201, response.text
        get = http_getter(url, "alice")
        done = follow_job(get, response.json()["id"], ("succeeded", "failed"), 400)
        assert done["state"] == "succeeded", done["error"]
        metrics = done["result"]["metrics"]
        assert metrics["rmse"] > 0 and "rmse_weighted" in metrics and "auc" not in metrics
        assert "plot_residuals" in done["links"] and "plot_roc" not in done["links"]
        png = requests.get(f"{url}{done['links']['plot_residuals']}", headers=ALICE, timeout=30)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        missing = requests.get(f"{url}/jobs/{done['id']}/plots/roc.png", headers=ALICE, timeout=30)
        assert missing.status_code == 404 and "made no roc plot" in missing.json()["error"]
    assert (data_dir / "models" / "alice.energy" / "1" / "residuals.png").is_file()
