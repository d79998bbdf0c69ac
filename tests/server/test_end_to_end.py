"""The whole service on loopback: gunicorn serving the API and TFaaS, a worker, XRootD origin and proxy.

A user submits a workflow whose files are root:// URLs through the proxy, follows it to success, downloads the
bundle and plots, and asks TFaaS for predictions of the new model: they match the bundle's own SavedModel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from servicecore.safetar import extract_archive
from tests.server.conftest import api_process, follow_job, worker_process, workflow
from tests.tfaas.server import tfaas_server

pytestmark = pytest.mark.slow
USER = {"X-Forwarded-Email": "alice@example.org"}


def test_submit_follow_download_and_predict_with_tfaas(data_dir, tmp_path, remote_samples):
    with api_process(data_dir, tmp_path / "api.log") as url, \
            worker_process(data_dir, tmp_path / "worker.log", *remote_samples.values()), \
            tfaas_server(data_dir / "models", tmp_path) as tfaas:  # fmt: skip
        body = workflow(
            remote_samples,
            name="ttbar",
            params={"epochs": 2, "batch_size": 128, "chunk_size": 2000, "nevts": 4000, "seed": 3},
        )
        submitted = requests.post(f"{url}/jobs", json=body, headers=USER, timeout=60)
        assert submitted.status_code == 201, submitted.text
        job = submitted.json()
        seen_progress = []

        def get_as_user(job_id: str) -> dict:
            response = requests.get(f"{url}/jobs/{job_id}", headers=USER, timeout=30)
            response.raise_for_status()
            view = response.json()
            seen_progress.append(view["progress"])
            return view

        done = follow_job(get_as_user, job["id"], ("succeeded", "failed", "cancelled"), 600)
        assert done["state"] == "succeeded", done["error"]
        assert done["started"] <= done["finished"]
        assert done["result"]["metrics"]["auc"] > 0.7
        assert done["progress"]["stage"] == "done"
        assert any(p.get("epoch") for p in seen_progress) or done["progress"]["epochs"] == 2
        name = done["model_name"]
        assert name.startswith("alice-40example-2eorg.") and done["result"]["name"] == name

        logs = requests.get(f"{url}/jobs/{job['id']}/logs", headers=USER, timeout=30)
        assert logs.status_code == 200 and "training exited with code 0" in logs.text
        followed = requests.get(f"{url}/jobs/{job['id']}/logs?follow=true", headers=USER, timeout=60)
        assert followed.text == logs.text
        for plot in ("roc", "loss"):
            png = requests.get(f"{url}/jobs/{job['id']}/plots/{plot}.png", headers=USER, timeout=30)
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        model = requests.get(f"{url}/jobs/{job['id']}/model", headers=USER, timeout=60)
        assert model.status_code == 200
        bundle = tmp_path / "download"
        extract_archive(model.content, bundle)  # Debian 12's Python 3.11.2 has no extraction filters
        bundle = bundle / name
        assert json.loads((bundle / "params.json").read_text())["name"] == name

        import tensorflow as tf

        serving = tf.saved_model.load(str(bundle)).signatures["serving_default"]
        dim = serving.structured_input_signature[1]["inputs"].shape[1]
        rows = np.random.default_rng(5).random((7, dim), dtype=np.float32)
        expected = serving(inputs=tf.constant(rows))["outputs"].numpy()

        prediction = tfaas.post("/json", json={"model": name, "values": rows.tolist()})
        assert prediction.status_code == 200, prediction.text
        np.testing.assert_allclose(np.asarray(prediction.json(), dtype=np.float32).reshape(expected.shape),
                                   expected, rtol=1e-4, atol=1e-5)  # fmt: skip
        # The prototype's calls see the same job.
        status = requests.get(f"{url}/status?job_id={job['id']}", headers=USER, timeout=30).json()
        assert status["state"] == "succeeded"
        again = requests.get(f"{url}/model?job_id={job['id']}", headers=USER, timeout=60)
        assert again.content == model.content
