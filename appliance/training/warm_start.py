"""Continuous training: a run that starts from a published model (``init_model``) and trains it further.

The bundle of the earlier model gives three things: its feature spec, whose transform (the same columns, the
same normalisation constants) the new run keeps, so that the weights see the inputs they were trained on;
its weights (a Keras SavedModel's variables, a PyTorch ``state_dict``, a pickled estimator); and, through the
runtime that serves it, the old model's outputs on the new run's test events, which the metrics compare with
the new model's. Nothing here knows of jobs: the API checks a request with :func:`check_workflow` (first
file only, before anything is queued) and the run checks all of it again with :func:`warm_spec`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.data.features import FeatureSpec
from appliance.data.specs import plan_sources
from appliance.data.workflow import Workflow
from appliance.training.bundle import INPUT_NAME, NATIVE_DIRECTORY, ONNX_FILE, OUTPUT_NAME, SIGNATURE
from appliance.training.evaluation import roc_metrics
from appliance.training.frameworks import EstimatorModel, FrameworkModel, TorchModel, cross_entropy
from servicecore.errors import BadInputError

# The model built from the job's model file, given init_model's weights, must reproduce init_model's own
# outputs (as its bundle serves them) to this on random inputs: otherwise it is another model.
START_TOLERANCE = 1e-4
START_CHECK_ROWS = 256
# Settings of params.json that shape the transform; a warm start keeps init_model's, and refuses others.
TRANSFORM_PARAMS = {"normalisation": "normalisation", "nan": "nan_value", "mask": "mask"}

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class InitModel:
    """A published bundle to start from: where it is, what it is, and its feature spec and classes."""

    path: Path
    name: str
    version: int | None
    params: dict[str, Any]
    spec: FeatureSpec
    class_names: list[str]

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}" if self.version is not None else self.name

    @property
    def framework(self) -> str:
        return str(self.params.get("framework") or "keras")

    @property
    def runtime(self) -> str:
        return str(self.params.get("runtime") or "tensorflow")


def read_init_model(path: str | Path) -> InitModel:
    """The bundle at ``path``, checked enough to start from: params.json with its features, labels.txt."""
    path = Path(path)
    where = f"init_model {str(path)!r}"
    try:
        params = json.loads((path / "params.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(
            f"{where} is not a model bundle: its params.json cannot be read ({err})"
        ) from None
    if not isinstance(params, dict) or not isinstance(params.get("features"), dict):
        raise BadInputError(f"{where} has no feature spec in its params.json: it cannot be trained further")
    try:
        classes = [line for line in (path / "labels.txt").read_text().splitlines() if line]
    except OSError:
        raise BadInputError(f"{where} has no labels.txt") from None
    version = params.get("version")
    return InitModel(
        path=path,
        name=str(params.get("name") or path.name),
        version=version if isinstance(version, int) else None,
        params=params,
        spec=FeatureSpec.from_dict(params["features"]),
        class_names=classes,
    )


# -- does the new data fit the old model? ------------------------------------------------------------------


def check_features(
    init: InitModel,
    features: list[tuple[str, str]],
    new_branches: Mapping[str, Any],
    class_names: list[str] | None,
) -> None:
    """The job's feature branches (name, kind), its new-branch definitions and its classes must be
    init_model's; the error names every branch that differs."""
    old = {b.name: b.kind for b in init.spec.branches}
    new = dict(features)
    problems = []
    missing = [name for name in old if name not in new]
    if missing:
        problems.append(f"it takes branch(es) {_listed(missing)} that this job's data does not give")
    extra = [name for name in new if name not in old]
    if extra:
        problems.append(
            f"this job's data gives branch(es) {_listed(extra)} that it does not take "
            "(exclude them: exclude_branches)"
        )
    changed = [
        f"{name} ({old[name]} there, {new[name]} here)"
        for name in old
        if new.get(name, old[name]) != old[name]
    ]
    if changed:
        problems.append(f"branch(es) {_listed(changed)} changed kind")
    definitions = {name: dict(d) for name, d in new_branches.items()}
    if definitions != {name: dict(d) for name, d in init.spec.new_branches.items()}:
        problems.append("preproc.json's new_branch definitions differ from those it was trained with")
    if class_names is not None and list(class_names) != init.class_names:
        problems.append(f"its classes are {init.class_names}, this job's {list(class_names)}")
    if problems:
        raise BadInputError(f"init_model {init.label} has another feature spec: {'; '.join(problems)}")


def _listed(names: list[str], shown: int = 12) -> str:
    """A NanoAOD file has a thousand branches: name the first few, count the others."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_params(init: InitModel, params: Mapping[str, Any]) -> None:
    """Settings of params.json that would change the transform must be init_model's (or left out)."""
    spec = init.spec
    for key, attribute in TRANSFORM_PARAMS.items():
        if key in params and params[key] != getattr(spec, attribute):
            raise BadInputError(
                f"params.json: {key} {params[key]!r} differs from init_model {init.label}'s "
                f"{getattr(spec, attribute)!r}; a warm start keeps the model's input transform (leave it out)"
            )


def check_workflow(init: InitModel, wf: Workflow, params: Mapping[str, Any]) -> None:
    """The API's check before a job is queued: the branches of the first file, the classes, the params.
    The run checks every file again after pass 1 (:func:`warm_spec`)."""
    check_params(init, params)
    first = dataclasses.replace(wf, files=wf.files[:1], labels=wf.labels[:1] if wf.labels else None)
    _, features, _ = plan_sources(first)
    check_features(init, features, wf.preproc.new_branches, wf.class_names if wf.labels else None)


def warm_spec(init: InitModel, new: FeatureSpec, params: Mapping[str, Any]) -> FeatureSpec:
    """init_model's transform (columns, normalisation constants, padded lengths) over the new data set,
    once the new data's branches and classes and the run's ``params`` are checked against it."""
    check_params(init, params)
    check_features(
        init, [(b.name, b.kind) for b in new.branches], new.new_branches, new.dataset.get("class_names")
    )
    old = init.spec
    return FeatureSpec(
        flat=copy.deepcopy(old.flat),
        jagged=copy.deepcopy(old.jagged),
        normalisation=old.normalisation,
        nan_value=old.nan_value,
        mask=old.mask,
        new_branches=dict(old.new_branches),
        dataset={**new.dataset, "init_model": {"name": init.name, "version": init.version}},
    )


# -- the old model's weights and outputs ---------------------------------------------------------------------


def bundle_predictor(init: InitModel) -> Predict | None:
    """init_model's outputs as its bundle serves them (SavedModel or ONNX); None for an unservable bundle."""
    if init.runtime == "onnx":
        if not (init.path / ONNX_FILE).is_file():
            return None
        import onnxruntime

        session = onnxruntime.InferenceSession(str(init.path / ONNX_FILE), providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]
    import tensorflow as tf

    serving = tf.saved_model.load(str(init.path)).signatures[SIGNATURE]
    return lambda x: serving(**{INPUT_NAME: tf.constant(x, tf.float32)})[OUTPUT_NAME].numpy()


def start_from(model: Any, init: InitModel) -> float | None:
    """Give ``model`` init_model's weights, then check that it now computes init_model's outputs.

    Returns the largest difference seen (None when the bundle cannot be run to compare with)."""
    framework = model.framework if isinstance(model, FrameworkModel) else "keras"
    if framework != init.framework:
        raise BadInputError(
            f"init_model {init.label} is a {init.framework} model; this job's model is {framework}"
        )
    if isinstance(model, TorchModel):
        _load_torch(model, init)
    elif isinstance(model, EstimatorModel):
        _load_estimator(model, init)
    else:
        _load_keras(model, init)
    reference = bundle_predictor(init)
    if reference is None:
        return None
    rows = np.random.default_rng(0).random((START_CHECK_ROWS, init.spec.dim), dtype=np.float32)
    expected = np.asarray(reference(rows), dtype=np.float32)
    if isinstance(model, FrameworkModel):
        got = model.predict(rows)
    else:
        got = np.asarray(model(rows, training=False), dtype=np.float32)
    if got.shape != expected.shape:
        raise BadInputError(
            f"this job's model outputs shape {got.shape[1:]}, init_model {init.label} {expected.shape[1:]}"
        )
    difference = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not np.allclose(got, expected, rtol=START_TOLERANCE, atol=START_TOLERANCE):
        raise BadInputError(
            f"this job's model is not init_model {init.label}: with its weights the outputs differ by up to "
            f"{difference:.3g}; give the model file it was trained with"
        )
    return difference


def _load_keras(model: Any, init: InitModel) -> None:
    """The SavedModel keeps the Keras model's variables in the model's own order (``ExportArchive.track``)."""
    import tensorflow as tf

    variables = list(tf.saved_model.load(str(init.path)).variables)
    weights = list(model.weights)
    old = [tuple(v.shape) for v in variables]
    new = [tuple(w.shape) for w in weights]
    if old != new:
        raise BadInputError(
            f"init_model {init.label}'s weights do not fit this job's model: it has weight shapes {old}, "
            f"the model {new}"
        )
    for weight, variable in zip(weights, variables, strict=True):
        weight.assign(variable.numpy())


def _load_torch(model: TorchModel, init: InitModel) -> None:
    import torch

    path = init.path / NATIVE_DIRECTORY / "state_dict.pt"
    if not path.is_file():
        raise BadInputError(f"init_model {init.label} keeps no PyTorch state_dict to start from")
    state = torch.load(path, map_location=model.device, weights_only=True)
    try:
        model.module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise BadInputError(
            f"init_model {init.label}'s weights do not fit this job's module: {' '.join(first[:3])[:400]}"
        ) from None


def _load_estimator(model: EstimatorModel, init: InitModel) -> None:
    """XGBoost adds boosting rounds to the old booster; a scikit-learn estimator goes on with partial_fit."""
    path = init.path / NATIVE_DIRECTORY / "estimator.joblib"
    if not path.is_file():
        raise BadInputError(
            f"init_model {init.label} keeps no estimator to start from (a class defined in model.py cannot "
            "be saved)"
        )
    import joblib

    loaded = joblib.load(path)
    if type(loaded) is not type(model.estimator):
        raise BadInputError(
            f"init_model {init.label} is a {type(loaded).__name__}, this job's model a "
            f"{type(model.estimator).__name__}"
        )
    if model.framework != "xgboost" and not model.streaming:
        raise BadInputError(
            f"{type(loaded).__name__} cannot continue training from init_model {init.label}: it has no "
            "partial_fit (scikit-learn estimators continue with partial_fit, XGBoost models by boosting on)"
        )
    # The fitted old estimator with the job's hyperparameters (XGBoost: n_estimators = the rounds added).
    loaded.set_params(**model.estimator.get_params(deep=False))
    model.estimator = loaded
    model.started = True
    if model.framework == "xgboost":
        model.fit_options = {"xgb_model": loaded.get_booster()}


def old_model_metrics(
    predict: Predict,
    batches: Any,
    y: np.ndarray,
    probabilities: Callable[[np.ndarray], np.ndarray],
    class_names: list[str],
) -> dict[str, Any]:
    """init_model's test metrics on the new run's test events (loss is the cross-entropy)."""
    outputs = [np.asarray(predict(np.asarray(x)), dtype=np.float32) for x, *_ in batches]
    if not outputs or len(y) == 0:
        return {"events": 0}
    p = probabilities(np.concatenate(outputs))
    metrics: dict[str, Any] = {
        "events": len(y),
        "loss": cross_entropy(p, y),
        "accuracy": float(np.mean(np.argmax(p, axis=1) == y)),
    }
    auc, _ = roc_metrics(y, p, class_names)
    return metrics | auc
