"""Helpers for the training tests: workflow files on disk and small, fast models."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Small and quick to learn, so that a few epochs on a few thousand events separate the classes.
SMALL_MODEL = {
    "layers": [
        {"type": "Dense", "units": 16, "activation": "relu"},
        {"type": "Dense", "units": 1, "activation": "sigmoid"},
    ],
    "loss": "binary_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "metrics": ["accuracy"],
}
FAST_PARAMS = {"epochs": 2, "batch_size": 64, "chunk_size": 1000, "seed": 7}


@dataclass
class WorkflowFiles:
    files: Path
    labels: Path
    params: Path
    model: Path
    directory: Path

    def kwargs(self, **extra: object) -> dict[str, object]:
        return {
            "files": self.files,
            "labels": self.labels,
            "params": self.params,
            "model": self.model,
            **extra,
        }


MakeWorkflow = Callable[..., WorkflowFiles]


def write_workflow(
    directory: Path,
    files: Sequence[str | Path],
    labels: Sequence[int | str],
    params: dict | None = None,
    model: dict | str | None = None,
    model_suffix: str = ".json",
) -> WorkflowFiles:
    """Write files.txt, labels.txt, params.json and a model file into ``directory``."""
    directory.mkdir(parents=True)
    (directory / "files.txt").write_text("".join(f"{f}\n" for f in files))
    (directory / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    (directory / "params.json").write_text(json.dumps({**FAST_PARAMS, **(params or {})}))
    model = SMALL_MODEL if model is None else model
    model_path = directory / f"model{model_suffix}"
    model_path.write_text(model if isinstance(model, str) else json.dumps(model))
    return WorkflowFiles(
        directory / "files.txt", directory / "labels.txt", directory / "params.json", model_path, directory
    )


@pytest.fixture
def make_workflow(tmp_path: Path) -> MakeWorkflow:
    counter = iter(range(1000))

    def make(*args: object, **kwargs: object) -> WorkflowFiles:
        return write_workflow(tmp_path / f"workflow{next(counter)}", *args, **kwargs)

    return make
