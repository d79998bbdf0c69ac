"""What the API says about the whole installation: ``/health`` (JSON) and ``/metrics`` (Prometheus).

Both read the job store, which every worker on every machine shares: the queue depth is the number of queued
jobs, and the live workers are those whose heartbeat (``JobQueue.beat``) is younger than ``stale_after_s``.
Each app has its own Prometheus registry (no module-level state), whose one collector reads the store at
each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.server.context import job_queue, json_response
from appliance.server.openapi import json_content, operation
from appliance.server.queue import JobQueue
from appliance.server.store import QUEUED, iso

HEALTH_ANSWER = {
    "description": "the service is up; queue depth, jobs by state and the live workers",
    "content": json_content({"type": "object"}),
}
METRICS_ANSWER = {
    "description": "Prometheus text format",
    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
}
REGISTRY_KEY = "mlaas4hep.metrics"


def health(queue: JobQueue) -> dict[str, Any]:
    states = queue.store.count_by_state()
    version = queue.version
    workers = [
        {
            "id": worker.id,
            "host": worker.host,
            "version": worker.version,
            "version_matches": worker.version == version,
            # such a worker takes no job (appliance.server.queue.version_refusal)
            "refuses_jobs": None
            if worker.version == version
            else f"version {worker.version}, the front {version}",
            "running": worker.running,
            "gpus": worker.gpus,
            "heartbeat": iso(worker.heartbeat),
        }
        for worker in queue.store.live_workers(queue.settings.stale_after_s)
    ]
    return {
        "service": "MLaaS4HEP",
        "status": "ok",
        "version": version,
        "queue_depth": states[QUEUED],
        "jobs": states,
        "live_workers": len(workers),
        "workers": workers,
    }


class StoreCollector(Collector):
    """Jobs by state, queue depth and live workers, read from the store at each scrape."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.queue.store.count_by_state()
        by_state = GaugeMetricFamily("mlaas4hep_jobs", "jobs in the store, by state", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            "mlaas4hep_queue_depth", "jobs queued, waiting for a worker", value=states[QUEUED]
        )
        live = self.queue.store.live_workers(self.queue.settings.stale_after_s)
        yield GaugeMetricFamily(
            "mlaas4hep_live_workers", "workers heard from within stale_after_s", value=len(live)
        )
        running = GaugeMetricFamily(
            "mlaas4hep_worker_running_jobs", "jobs each live worker runs", labels=["worker"]
        )
        for worker in live:
            running.add_metric([worker.id], worker.running)
        yield running


def blueprint(queue: JobQueue) -> flask.Blueprint:
    bp = flask.Blueprint("service_health", __name__)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(queue))

    @bp.get("/hello")
    @bp.get("/health")
    @operation("health check, queue depth and live workers (no identity needed)", {200: HEALTH_ANSWER})
    def hello() -> Response:
        return json_response(health(job_queue()))

    @bp.get("/metrics")
    @operation(
        "Prometheus metrics: jobs by state, queue depth, live workers (no identity needed)",
        {200: METRICS_ANSWER},
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return bp
