"""Service endpoints: ``/status`` (server and host facts), ``/metrics`` (Prometheus), ``/openapi.json``;
and the request metrics of every Flask view."""

from __future__ import annotations

import os
import platform
import socket
import time

from flask import Blueprint, Flask, Response, g, request

from tfaas.dataplane import DataPlane
from tfaas.metrics import Metrics
from tfaas.openapi import openapi_document
from tfaas.protocols.common import json_response
from tfaas.protocols.kserve import SERVER_NAME, SERVER_VERSION


def blueprint(plane: DataPlane, base: str, metrics: Metrics) -> Blueprint:
    bp = Blueprint("service", __name__, url_prefix=base or None)
    started = time.time()

    @bp.get("/status")
    def status() -> Response:
        import psutil

        memory = psutil.virtual_memory()
        return json_response(
            {
                "status": "ok",
                "server": SERVER_NAME,
                "version": SERVER_VERSION,
                "hostname": socket.gethostname(),
                "python": platform.python_version(),
                "pid": os.getpid(),
                "uptime_s": round(time.time() - started, 3),
                "models": len(plane.models()),
                "loaded_in_worker": [f"{n}/{v}" for n, v in sorted(plane.store.loaded())],
                "cpu_count": os.cpu_count(),
                "load_average": list(os.getloadavg()),
                "memory": {"total": memory.total, "available": memory.available, "percent": memory.percent},
                "process_rss": psutil.Process().memory_info().rss,
            }
        )

    @bp.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return json_response(openapi_document(base))

    return bp


def count_requests(app: Flask, metrics: Metrics) -> None:
    """Count and time every request Flask answers, by endpoint (the view's name, without its blueprint)."""

    @app.before_request
    def start_clock() -> None:
        g.tfaas_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = (request.endpoint or "unknown").rpartition(".")[2]
        elapsed = time.perf_counter() - g.get("tfaas_started", time.perf_counter())
        metrics.observe(endpoint, request.method, response.status_code, elapsed)
        return response
