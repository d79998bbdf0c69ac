"""Prometheus metrics of TFaaS, shared by the gunicorn workers through prometheus_client's multiprocess mode.

``python -m tfaas`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker starts; each
worker then writes its values there and ``/metrics`` adds them up. Without that variable (an app built in a
test process) the app's own registry is exposed.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from tfaas.settings import MULTIPROC_ENV

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tfaas_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tfaas_request_errors",
            "HTTP requests answered with an error status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tfaas_request_latency_seconds",
            "Time to answer a request",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "tfaas_batch_rows",
            "Rows per model call (after dynamic batching)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.loaded_models = Gauge(
            "tfaas_loaded_models",
            "Model versions loaded, summed over live workers",
            multiprocess_mode="livesum",
            registry=self.registry,
        )

        # The labelled children by (endpoint, method, status): looking them up through labels() on every
        # request costs more than the observation itself.
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, method, str(status)),
                self.errors.labels(endpoint, str(status)) if status >= 400 else None,
                self.latency.labels(endpoint),
            )
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
