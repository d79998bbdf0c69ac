"""GPU jobs on hosts without one: refused at submit time unless a live worker reports a GPU; a worker without
one leaves a GPU job queued for the others. No test needs a GPU: the GPU count comes from device files."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.server.context import SERVER_NAME
from appliance.server.queue import appliance_version
from appliance.server.resources import host_gpus
from tests.server.conftest import workflow
from tests.server.test_api import assert_error, submit


@pytest.mark.parametrize(
    ("devices", "visible", "expected"),
    [
        ((), None, 0),
        (("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"), None, 2),
        (("nvidia0", "nvidia1"), "", 0),
        (("nvidia0", "nvidia1"), "-1", 0),
        (("nvidia0", "nvidia1"), "1", 1),
        (("nvidia0",), "0,1,2", 1),
    ],
)
def test_the_gpus_of_a_host_are_its_nvidia_devices_as_far_as_cuda_may_see_them(
    tmp_path: Path, devices: tuple[str, ...], visible: str | None, expected: int
) -> None:
    for name in devices:
        (tmp_path / name).touch()
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert host_gpus(tmp_path, environ) == expected


def test_a_gpu_job_is_taken_only_while_a_live_worker_has_a_gpu(make_app, remote_samples) -> None:
    client = make_app()
    store = client.application.extensions[SERVER_NAME].store
    gpu_job = workflow(remote_samples, device="gpu")
    assert_error(submit(client, gpu_job), 400, "no live worker has a GPU", '"device": "cpu"')
    store.worker_beat("cpuhost:1", "cpuhost", appliance_version(), running=0, gpus=0)
    assert_error(submit(client, gpu_job), 400, "no live worker has a GPU")
    assert client.get("/jobs", headers={"X-Forwarded-User": "alice"}).get_json()["jobs"] == []

    store.worker_beat("gpuhost:1", "gpuhost", appliance_version(), running=0, gpus=2)
    accepted = submit(client, gpu_job)
    assert accepted.status_code == 201, accepted.get_data(as_text=True)
    assert accepted.get_json()["resources"]["device"] == "gpu"
    health = client.get("/health").get_json()
    assert {w["id"]: w["gpus"] for w in health["workers"]} == {"cpuhost:1": 0, "gpuhost:1": 2}

    store.worker_gone("gpuhost:1")
    assert_error(submit(client, gpu_job), 400, "no live worker has a GPU")
    cpu = submit(client, workflow(remote_samples, device="cpu"))
    assert cpu.status_code == 201, cpu.get_data(as_text=True)


def test_gpu_jobs_off_refuses_every_gpu_request(make_app, remote_samples) -> None:
    client = make_app(gpu_jobs=False)
    store = client.application.extensions[SERVER_NAME].store
    store.worker_beat("gpuhost:1", "gpuhost", appliance_version(), running=0, gpus=1)
    assert_error(submit(client, workflow(remote_samples, device="gpu")), 400, "gpu_jobs is off")


@pytest.mark.skipif(host_gpus() > 0, reason="this host has a GPU: its worker would take the job")
def test_a_worker_without_a_gpu_leaves_a_gpu_job_queued(make_app, remote_samples) -> None:
    client = make_app()
    queue = client.application.extensions[SERVER_NAME]
    queue.store.worker_beat("gpuhost:1", "gpuhost", appliance_version(), running=0, gpus=1)
    job = submit(client, workflow(remote_samples, device="gpu")).get_json()
    queue.run_job(job["id"])  # what a worker on this GPU-less host does with the job's message
    assert queue.store.get(job["id"]).state == "queued"


def test_a_gpu_job_runs_with_the_gpus_visible_and_its_memory_limit_on_its_data(make_app) -> None:
    from appliance.server.runner import JobRun
    from appliance.server.store import QUEUED, Job, now

    queue = make_app().application.extensions[SERVER_NAME]
    runs = {}
    for device in ("cpu", "gpu"):
        resources = {"memory_mb": 2048, "cpus": 1, "wall_time_s": 600, "device": device}
        job = Job(id="0" * 31 + str(len(runs)), owner="alice", name="m", model_name="alice.m", state=QUEUED,
                  resources=resources, created=now(), request={"model_file": "model.json"})  # fmt: skip
        runs[device] = JobRun(queue.settings, job, queue.store, "here:1", None)
    cpu, gpu = (runs[d].environment() for d in ("cpu", "gpu"))
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "TF_FORCE_GPU_ALLOW_GROWTH" not in cpu
    assert "CUDA_VISIBLE_DEVICES" not in gpu and gpu["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    memory = f"={2048 * 1024 * 1024}"
    assert f"--as{memory}" in runs["cpu"].argv() and f"--data{memory}" not in runs["cpu"].argv()
    assert f"--data{memory}" in runs["gpu"].argv() and f"--as{memory}" not in runs["gpu"].argv()
