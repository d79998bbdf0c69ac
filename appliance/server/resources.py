"""What a job asks for: memory, CPU cores, wall time and device, each checked against the server's limits."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.server.settings import Settings
from appliance.server.store import WorkerBeat
from servicecore.errors import BadInputError

# Memory in MiB; a bare number is MiB.
MEMORY_UNITS = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Resources:
    memory_mb: int
    cpus: int
    wall_time_s: int
    device: str = "cpu"
    workers: int = (
        1  # a training spread over this many workers (docs/scaling.md, "One job on several workers")
    )

    @classmethod
    def from_request(cls, request: Mapping[str, Any], settings: Settings) -> Resources:
        """``memory`` ("3gb", "512MiB", a number of MiB), ``cpus`` and ``wall_time`` ("2h", seconds),
        ``device`` ("cpu" or "gpu") and ``workers``, each checked against the server's limits."""
        memory = _quantity(request.get("memory"), MEMORY_UNITS, "memory", settings.default_memory_mb)
        cpus_value = request.get("cpus")
        if cpus_value in (None, ""):
            cpus = float(settings.default_cpus)
        else:
            try:
                cpus = float(cpus_value)
            except (TypeError, ValueError):
                raise BadInputError(f"cpus must be a number, got {cpus_value!r}") from None
            if isinstance(cpus_value, bool) or not math.isfinite(cpus) or cpus <= 0:
                raise BadInputError(f"cpus must be a positive number, got {cpus_value!r}")
        wall = _quantity(request.get("wall_time"), DURATION_UNITS, "wall_time", settings.default_wall_time_s)
        device = request.get("device") or "cpu"
        if device not in ("cpu", "gpu"):
            raise BadInputError(f'device must be "cpu" or "gpu", got {device!r}')
        if device == "gpu" and not settings.gpu_jobs:
            raise BadInputError('this server runs no GPU jobs (gpu_jobs is off): ask for "device": "cpu"')
        workers = request.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise BadInputError(f"workers must be a positive integer, got {workers!r}")
        if workers > settings.max_workers_per_job:
            raise BadInputError(
                f"workers {workers} is above this server's limit of {settings.max_workers_per_job} per job "
                "(max_workers_per_job)"
            )
        for what, asked, limit, unit in (
            ("memory", memory, settings.max_memory_mb, " MiB"),
            ("cpus", cpus, settings.max_cpus, ""),
            ("wall_time", wall, settings.max_wall_time_s, " s"),
        ):
            if asked > limit:
                raise BadInputError(
                    f"{what} {_number(asked)}{unit} is above this server's limit of {limit}{unit}"
                )
        return cls(
            memory_mb=math.ceil(memory),
            cpus=math.ceil(cpus),
            wall_time_s=math.ceil(wall),
            device=device,
            workers=workers,
        )


def require_live_workers(asked: int, live: list[WorkerBeat]) -> None:
    """A job spread over ``asked`` workers needs that many live ones: its tasks must all run at once."""
    if asked > len(live):
        raise BadInputError(
            f"workers {asked} is more than the {len(live)} live worker(s) of this server: ask for at most "
            f"{len(live)}"
        )


def require_gpu_worker(live: Iterable[WorkerBeat]) -> None:
    """A GPU job is accepted only while a live worker reports a GPU: no worker would ever run it otherwise
    (workers without one leave GPU jobs to the others, ``appliance.server.queue``)."""
    if not any(worker.gpus > 0 for worker in live):
        raise BadInputError(
            'no live worker has a GPU (each reports the GPUs of its host): ask for "device": "cpu"'
        )


def host_gpus(dev: Path = Path("/dev"), environ: Mapping[str, str] = os.environ) -> int:
    """The NVIDIA GPUs this host can give jobs: its ``/dev/nvidiaN`` devices, no more than
    ``CUDA_VISIBLE_DEVICES`` lists when it is set (empty or -1: none). Cheap, no CUDA library loaded."""
    devices = sum(1 for path in dev.glob("nvidia*") if path.name[len("nvidia") :].isdigit())
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return devices
    listed = [item for item in visible.split(",") if item.strip()]
    if not listed or listed[0].strip() == "-1":
        return 0
    return min(devices, len(listed))


def _quantity(value: Any, units: Mapping[str, float], what: str, default: float) -> float:
    if value in (None, ""):
        return float(default)
    if isinstance(value, bool):
        raise BadInputError(f"{what} must be a number or a string like '2gb', got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if match is None:
            raise BadInputError(f"{what} must be a number or a string like '2gb', got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
        unit = unit.removesuffix("ib").removesuffix("b") if what == "memory" else unit
    if unit not in units:
        raise BadInputError(
            f"{what}: unknown unit {unit!r} in {value!r} (known: {', '.join(u for u in units if u)})"
        )
    quantity = number * units[unit]
    if not math.isfinite(quantity) or quantity <= 0:
        raise BadInputError(f"{what} must be positive, got {value!r}")
    return quantity


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
