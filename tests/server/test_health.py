"""/health and /metrics report what the shared store knows: queue depth, jobs by state, live workers."""

from __future__ import annotations

import time

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from appliance.server.context import SERVER_NAME
from appliance.server.queue import appliance_version
from appliance.server.store import QUEUED, Job, now


def add_jobs(store, n: int) -> None:
    for i in range(n):
        store.add(
            Job(
                id=f"{i:032x}",
                owner="alice",
                name="j",
                model_name="alice.m",
                state=QUEUED,
                resources={},
                created=now(),
            )
        )


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_health_and_metrics_follow_the_store(make_app) -> None:
    client = make_app()
    queue = client.application.extensions[SERVER_NAME]
    empty = client.get("/health").get_json()
    assert (empty["status"], empty["queue_depth"], empty["live_workers"]) == ("ok", 0, 0)
    add_jobs(queue.store, 3)
    queue.store.claim(f"{0:032x}", "hostA:1")
    queue.store.worker_beat("hostA:1", "hostA", appliance_version(), running=1)
    queue.store.worker_beat("hostB:7", "hostB", "0.0.0-old", running=0)
    queue.store.worker_beat("hostC:9", "hostC", appliance_version(), running=0)
    with queue.store.engine.begin() as db:  # hostC went silent long ago
        db.execute(
            sa.text("UPDATE workers SET heartbeat = :t WHERE id = 'hostC:9'"), {"t": time.time() - 3600}
        )
    health = client.get("/health").get_json()
    assert health["queue_depth"] == 2 and health["jobs"]["running"] == 1
    assert health["live_workers"] == 2
    assert {(w["id"], w["version_matches"], w["running"]) for w in health["workers"]} == {
        ("hostA:1", True, 1),
        ("hostB:7", False, 0),
    }
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    values = samples(answer.get_data(as_text=True))
    assert values[("mlaas4hep_queue_depth", ())] == 2
    assert values[("mlaas4hep_live_workers", ())] == 2
    assert values[("mlaas4hep_jobs", (("state", "running"),))] == 1
    assert values[("mlaas4hep_jobs", (("state", "failed"),))] == 0
    assert values[("mlaas4hep_worker_running_jobs", (("worker", "hostA:1"),))] == 1


def test_a_worker_of_another_version_refuses_jobs_and_says_why(make_app, data_dir) -> None:
    from appliance.server.queue import JobQueue
    from appliance.server.settings import Settings
    from tests.server.conftest import server_env

    client = make_app()  # the front records its version in the store
    front = client.application.extensions[SERVER_NAME]
    assert front.version_refusal() is None
    add_jobs(front.store, 1)
    other = JobQueue(Settings.load(environ=server_env(data_dir, worker_version="0.0.0-other")))
    refusal = other.version_refusal()
    assert refusal is not None and "0.0.0-other" in refusal and appliance_version() in refusal
    other.run_job(f"{0:032x}")
    assert other.store.get(f"{0:032x}").state == QUEUED  # not taken: it waits for a worker that matches
    other.beat()
    (worker,) = client.get("/health").get_json()["workers"]
    assert worker["version_matches"] is False and "0.0.0-other" in worker["refuses_jobs"]
