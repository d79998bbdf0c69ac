"""What batch inference needs from a model bundle: its feature spec, its cuts, its tree and its output names.

A bundle is found by path, or as ``NAME[/VERSION]`` in a model repository laid out as servicecore.naming says
(the newest version when none is given; an original-style bundle with no version folder is version 1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.data.features import FeatureSpec
from appliance.data.workflow import Cut, Preproc
from servicecore.errors import BadInputError
from servicecore.naming import check_name, versions

BRANCH_CHARACTERS = re.compile(r"[^A-Za-z0-9_]")
SAVED_MODEL = "saved_model.pb"
ONNX_MODEL = "model.onnx"  # PyTorch, scikit-learn and XGBoost bundles (appliance.training.bundle)


@dataclass
class ModelBundle:
    path: Path
    name: str
    version: int | None
    params: dict[str, Any]
    labels: list[str]
    spec: FeatureSpec
    preproc: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        """The file that holds the model: ``saved_model.pb`` (TensorFlow) or ``model.onnx``."""
        return ONNX_MODEL if self.params.get("model") == ONNX_MODEL else SAVED_MODEL

    @property
    def tree(self) -> str:
        """The tree (or RNTuple) the model was trained on; predict reads the same name unless told."""
        return str(self.spec.dataset.get("tree") or "Events")

    @property
    def cuts(self) -> list[Cut]:
        return Preproc.from_dict(self.preproc, source=f"preproc.json of model {self.name!r}").cuts

    def needed_branches(self) -> dict[str, str | None]:
        """Raw columns the files must hold, with the kind each must have (None: any numeric column)."""
        needed: dict[str, str | None] = {
            b.name: b.kind for b in self.spec.branches if b.name not in self.spec.new_branches
        }
        for name in self.spec.input_branches:
            needed.setdefault(name, None)
        referenced = Preproc.from_dict(self.preproc).referenced_branches
        for name in sorted(referenced - set(self.spec.new_branches)):
            needed.setdefault(name, None)
        return needed

    def score_names(self, n_outputs: int) -> list[str]:
        """One friend branch per model output: ``score_<label>`` from labels.txt.

        A single sigmoid output over two classes is the probability of the second class (the training's
        binary encoding), so it is named after that class. Any other mismatch numbers the outputs.
        """
        if n_outputs == len(self.labels):
            labels = self.labels
        elif n_outputs == 1 and len(self.labels) == 2:
            labels = self.labels[1:]
        else:
            labels = [str(i) for i in range(n_outputs)]
        names: list[str] = []
        for label in labels:
            name = "score_" + BRANCH_CHARACTERS.sub("_", label)
            while name in names or name in ("entry", "passed"):
                name += "_"
            names.append(name)
        return names


def resolve_bundle(model: str | None, models_dir: str | Path | None, bundle: str | Path | None) -> Path:
    """The bundle directory named by ``--bundle PATH`` or by ``--model NAME[/VERSION] --models-dir REPO``."""
    if bundle is not None:
        path = Path(bundle)
        if not is_bundle(path):
            raise BadInputError(
                f"{str(path)!r} is not a model bundle (no params.json with saved_model.pb or model.onnx)"
            )
        return path.absolute()
    if not model or models_dir is None:
        raise BadInputError("name the model: --bundle PATH, or --model NAME[/VERSION] with --models-dir")
    name, _, version_text = model.partition("/")
    check_name(name)
    model_dir = Path(models_dir) / name
    if version_text:
        if not version_text.isdigit() or int(version_text) < 1:
            raise BadInputError(f"model version must be a positive integer, got {version_text!r}")
        version = int(version_text)
        path = model_dir / str(version)
        if version == 1 and not path.is_dir() and (model_dir / SAVED_MODEL).is_file():
            path = model_dir
    else:
        present = versions(model_dir)
        path = model_dir / str(present[-1]) if present else model_dir
    if not is_bundle(path):
        raise BadInputError(f"model {model!r} not found in the model repository {str(models_dir)!r}")
    return path.absolute()


def is_bundle(path: Path) -> bool:
    """A bundle directory: a params.json (``load_bundle`` then says what it lacks, a model the training marked
    not servable included), or the SavedModel of an original TFaaS bundle."""
    return (path / "params.json").is_file() or (path / SAVED_MODEL).is_file()


def load_bundle(path: str | Path) -> ModelBundle:
    """Read params.json, labels.txt and the feature spec; refuse a bundle made without a feature spec."""
    path = Path(path)
    try:
        params = json.loads((path / "params.json").read_text())
    except FileNotFoundError:
        raise BadInputError(f"model bundle {str(path)!r} has no params.json") from None
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(f"params.json of {str(path)!r} is not readable JSON: {err}") from None
    if not isinstance(params, dict) or not isinstance(params.get("features"), dict):
        raise BadInputError(
            f"model bundle {str(path)!r} carries no feature spec (params.json 'features'): "
            "batch inference needs a bundle written by mlaas4hep train"
        )
    if params.get("servable") is False:
        reason = params.get("unservable_reason") or "no reason recorded"
        raise BadInputError(
            f"model {params.get('name') or path.name!r} has no model to apply: its training marked it not "
            f"servable ({reason})"
        )
    labels_file = path / str(params.get("labels") or "labels.txt")
    labels = labels_file.read_text().split("\n") if labels_file.is_file() else []
    spec = FeatureSpec.from_dict(params["features"])
    version = params.get("version")
    return ModelBundle(
        path=path,
        name=str(params.get("name") or path.name),
        version=int(version)
        if isinstance(version, int)
        else (int(path.name) if path.name.isdigit() else None),
        params=params,
        labels=[label.strip() for label in labels if label.strip()],
        spec=spec,
        preproc=dict(spec.dataset.get("preproc") or {}),
    )
