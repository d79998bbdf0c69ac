"""The user's model: a Python file defining ``model(idim)``, or a declarative JSON model running no user code.

One piece although above 400 lines: loading, building and checking a model against the data (classes or
regression targets) are one contract, read together.

A Python model file is the original MLaaS4HEP's contract: ``model(idim)`` returns a compiled Keras model whose
input takes ``idim`` features. A JSON model describes a stack of layers, the loss, the optimizer and the
metrics; it is built from a fixed list of Keras layers and options, so a user with no Python can train a
standard classifier and the service runs nothing but Keras. Every problem raises :class:`BadInputError`.

JSON model (``examples/model.json``)::

    {"layers": [{"type": "Dense", "units": 64, "activation": "relu"},
                {"type": "Dropout", "rate": 0.2},
                {"type": "Dense", "units": 1, "activation": "sigmoid"}],
     "loss": "binary_crossentropy",
     "optimizer": {"name": "adam", "learning_rate": 0.001},
     "metrics": ["accuracy"]}
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.training.frameworks import (
    EstimatorModel,
    FrameworkModel,
    build_torch_json_model,
    is_estimator,
    is_regressor,
    is_torch_module,
    torch_model,
    training_options,
)
from servicecore.errors import BadInputError

# Set before TensorFlow loads: the job worker's logs should not fill with its start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras

ACTIVATIONS = (
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
    "elu",
    "selu",
    "gelu",
    "swish",
    "silu",
    "linear",
    "leaky_relu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "exponential",
    "relu6",
    "mish",
)
# For each layer type the options a JSON model may give, with their JSON types.
LAYERS: dict[str, dict[str, tuple[type, ...]]] = {
    "Dense": {"units": (int,), "activation": (str,), "use_bias": (bool,), "name": (str,)},
    "Dropout": {"rate": (int, float), "name": (str,)},
    "GaussianNoise": {"stddev": (int, float), "name": (str,)},
    "BatchNormalization": {"momentum": (int, float), "epsilon": (int, float), "name": (str,)},
    "LayerNormalization": {"epsilon": (int, float), "name": (str,)},
    "Activation": {"activation": (str,), "name": (str,)},
}
REQUIRED = {
    "Dense": ("units",),
    "Dropout": ("rate",),
    "GaussianNoise": ("stddev",),
    "Activation": ("activation",),
}
OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adagrad": keras.optimizers.Adagrad,
}
OPTIMIZER_OPTIONS = (
    "learning_rate",
    "momentum",
    "nesterov",
    "weight_decay",
    "beta_1",
    "beta_2",
    "epsilon",
    "clipnorm",
)
JSON_MODEL_KEYS = ("layers", "loss", "optimizer", "metrics", "framework")
JSON_FRAMEWORKS = ("keras", "torch")


@dataclass(frozen=True)
class TargetEncoding:
    """How class indices are fed to the model's loss, and how its outputs become class probabilities.

    ``binary``: one output unit, targets 0/1. ``sparse``: one unit per class, integer targets (sparse losses).
    ``onehot``: one unit per class, one-hot targets (categorical losses, as the original's examples use).
    ``regression``: one unit per target branch, float targets (a regression loss such as ``mse``).
    """

    mode: str
    n_outputs: int

    @property
    def regression(self) -> bool:
        return self.mode == "regression"

    def targets(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        if self.mode == "regression":
            return y.astype(np.float32).reshape(len(y), -1)
        if self.mode == "binary":
            return y.astype(np.float32).reshape(-1, 1)
        if self.mode == "onehot":
            return np.eye(n_classes, dtype=np.float32)[y]
        return y.astype(np.int64)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, n_classes]`` from raw model outputs (logits are squashed)."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.mode == "binary":
            score = outputs.reshape(-1)
            if score.size and (score.min() < 0 or score.max() > 1):
                score = 1.0 / (1.0 + np.exp(-score))
            return np.column_stack([1.0 - score, score])
        rows = outputs.sum(axis=1)
        if outputs.size and (outputs.min() < 0 or not np.allclose(rows, 1.0, atol=1e-3)):
            shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        return outputs


def load_model(
    path: str | Path,
    idim: int,
    n_classes: int,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 100,
    seed: int = 0,
    regression: bool = False,
) -> tuple[Any, TargetEncoding]:
    """Build the user's model for ``idim`` inputs and check it fits the data's classes (or, for a
    ``regression``, its ``n_classes`` targets).

    A Keras model comes back compiled; a PyTorch module or an estimator comes back wrapped in a
    :class:`~appliance.training.frameworks.FrameworkModel` built with params.json's ``training`` ``options``.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise BadInputError(f"model file {source!r} does not exist")
    if path.suffix == ".json":
        data = _read_json_model(path)
        if _json_framework(data, source) == "torch":
            module, settings = build_torch_json_model(
                data, idim, n_classes, source, check_json_layer, regression
            )
            options = {**training_options(options or {}, "params.json"), **settings}
            wrapped: FrameworkModel = torch_model(
                module, options, idim, n_classes, batch_size, source, regression
            )
            return wrapped, _framework_encoding(wrapped, n_classes)
        model: Any = build_json_model(data, idim, n_classes, source=source, regression=regression)
    else:
        model = _call_python_model(path, idim)
    if isinstance(model, keras.Model):
        return model, check_model(model, idim, n_classes, source=source, regression=regression)
    options = training_options(options or {}, "params.json")
    if is_torch_module(model):
        wrapped = torch_model(model, options, idim, n_classes, batch_size, source, regression)
    elif not regression and not is_estimator(model):
        raise BadInputError(
            f"{source}: {type(model).__name__} has no predict_proba: it is no classifier; for regression "
            "targets set target in params.json"
        )
    else:
        wrapped = EstimatorModel(model, n_classes, options, seed, source, regression)
    return wrapped, _framework_encoding(wrapped, n_classes)


def _framework_encoding(model: FrameworkModel, n_classes: int) -> TargetEncoding:
    return TargetEncoding(model.encoding_mode, 1 if model.encoding_mode == "binary" else n_classes)


# Keras loss names that train a classifier: refused for regression targets, which need e.g. "mse".
CLASSIFICATION_LOSS_WORDS = ("crossentropy", "hinge", "focal")


def preflight_model(path: str | Path) -> None:
    """Catch what can be caught before pass 1 (which may take long): a missing file, a JSON model that does
    not build, a Python file that does not parse. The full checks need the input dimension."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"model file {str(path)!r} does not exist")
    if path.suffix == ".json":
        data = _read_json_model(path)
        if _json_framework(data, str(path)) == "torch":
            build_torch_json_model(data, 1, 2, str(path), check_json_layer)
        else:
            build_json_model(data, 1, 2, source=str(path))
        return
    try:
        compile(path.read_bytes(), str(path), "exec")
    except (SyntaxError, ValueError) as err:
        raise BadInputError(f"model file {str(path)!r} failed to load: {_describe(err)}") from None


def _call_python_model(path: Path, idim: int) -> Any:
    module_name = f"mlaas4hep_user_model_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BadInputError(f"model file {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:
        raise BadInputError(f"model file {str(path)!r} failed to load: {_describe(err)}") from None
    finally:
        sys.modules.pop(module_name, None)
    factory = getattr(module, "model", None)
    if factory is None:
        raise BadInputError(f"model file {str(path)!r} defines no function model(idim)")
    if not callable(factory):
        raise BadInputError(
            f"model file {str(path)!r}: 'model' is a {type(factory).__name__}, not a function model(idim)"
        )
    try:
        model = factory(idim)
    except (Exception, SystemExit) as err:
        raise BadInputError(f"model file {str(path)!r}: model({idim}) raised {_describe(err)}") from None
    if is_torch_module(model) or (is_regressor(model) and not isinstance(model, keras.Model)):
        return model
    if not isinstance(model, keras.Model):
        raise BadInputError(
            f"model file {str(path)!r}: model({idim}) returned a {type(model).__name__}, not a Keras model, "
            "a PyTorch nn.Module or a scikit-learn/XGBoost classifier (with predict_proba)"
        )
    if not model.compiled:
        raise BadInputError(
            f"model file {str(path)!r}: model({idim}) returned a model that is not compiled; "
            "call model.compile(loss=..., optimizer=...) before returning it"
        )
    return model


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def _read_json_model(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"model file {str(path)!r} is not valid JSON: {err}") from None


def build_json_model(
    data: Any, idim: int, n_classes: int, source: str = "model.json", regression: bool = False
) -> keras.Model:
    """Build and compile a declarative model. Only the layers and options listed in this module exist.

    Its default loss is binary_crossentropy for one output unit, sparse_categorical_crossentropy for more, and
    mse for a ``regression``."""
    if not isinstance(data, Mapping):
        raise BadInputError(f"{source}: a JSON model is an object with {', '.join(JSON_MODEL_KEYS)}")
    unknown = sorted(set(data) - set(JSON_MODEL_KEYS))
    if unknown:
        raise BadInputError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(JSON_MODEL_KEYS)}"
        )
    layers_data = data.get("layers")
    if not isinstance(layers_data, list) or not layers_data:
        raise BadInputError(f'{source}: "layers" must be a non-empty list of layer objects')
    layers = [keras.Input(shape=(idim,), name="inputs")]
    layers += [_json_layer(layer, f"{source}: layer {i + 1}") for i, layer in enumerate(layers_data)]
    model = keras.Sequential(layers, name="json_model")
    last_units = model.output_shape[-1]
    default = "binary_crossentropy" if last_units == 1 else "sparse_categorical_crossentropy"
    loss = data.get("loss", "mse" if regression else default)
    if not isinstance(loss, str):
        raise BadInputError(f'{source}: "loss" must be the name of a Keras loss, got {loss!r}')
    try:
        keras.losses.get(loss)
    except (ValueError, TypeError):
        raise BadInputError(f"{source}: unknown loss {loss!r}") from None
    metrics = data.get("metrics", [] if regression else ["accuracy"])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise BadInputError(f'{source}: "metrics" must be a list of metric names, got {metrics!r}')
    for metric in metrics:
        if metric not in ("accuracy", "acc"):
            try:
                keras.metrics.get(metric)
            except (ValueError, TypeError):
                raise BadInputError(f"{source}: unknown metric {metric!r}") from None
    model.compile(
        loss=loss, optimizer=_json_optimizer(data.get("optimizer", "adam"), source), metrics=metrics
    )
    return model


def _json_framework(data: Any, source: str) -> str:
    framework = data.get("framework", "keras") if isinstance(data, Mapping) else "keras"
    if framework not in JSON_FRAMEWORKS:
        raise BadInputError(
            f'{source}: unknown "framework" {framework!r}; known: {", ".join(JSON_FRAMEWORKS)}'
        )
    return framework


def _json_layer(layer: Any, where: str) -> keras.layers.Layer:
    kind, options = check_json_layer(layer, where)
    try:
        return getattr(keras.layers, kind)(**options)
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{where}: {kind}: {_describe(err)}") from None


def check_json_layer(layer: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A JSON layer's type and options, checked against the lists above (shared by Keras and PyTorch)."""
    if not isinstance(layer, Mapping) or "type" not in layer:
        raise BadInputError(f'{where}: a layer is an object with a "type", got {layer!r}')
    kind = layer["type"]
    if kind not in LAYERS:
        raise BadInputError(f"{where}: unknown layer type {kind!r}; known: {', '.join(LAYERS)}")
    options = {k: v for k, v in layer.items() if k != "type"}
    allowed = LAYERS[kind]
    for key, value in options.items():
        if key not in allowed:
            raise BadInputError(f"{where}: {kind} takes no option {key!r}; it takes {', '.join(allowed)}")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and bool not in allowed[key]):
            raise BadInputError(f"{where}: {kind} option {key!r} has the wrong type: {value!r}")
    missing = [k for k in REQUIRED.get(kind, ()) if k not in options]
    if missing:
        raise BadInputError(f"{where}: {kind} needs {', '.join(missing)}")
    if "activation" in options and options["activation"] not in ACTIVATIONS:
        raise BadInputError(
            f"{where}: unknown activation {options['activation']!r}; known: {', '.join(ACTIVATIONS)}"
        )
    if "units" in options and options["units"] <= 0:
        raise BadInputError(f"{where}: units must be positive, got {options['units']}")
    if "rate" in options and not 0 <= options["rate"] < 1:
        raise BadInputError(f"{where}: rate must be in [0, 1), got {options['rate']}")
    return kind, options


def _json_optimizer(spec: Any, source: str) -> keras.optimizers.Optimizer:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise BadInputError(f'{source}: "optimizer" is a name or an object with a "name", got {spec!r}')
    name = spec["name"].lower()
    if name not in OPTIMIZERS:
        raise BadInputError(f"{source}: unknown optimizer {spec['name']!r}; known: {', '.join(OPTIMIZERS)}")
    options = {k: v for k, v in spec.items() if k != "name"}
    for key, value in options.items():
        if key not in OPTIMIZER_OPTIONS:
            raise BadInputError(
                f"{source}: unknown optimizer option {key!r}; known: {', '.join(OPTIMIZER_OPTIONS)}"
            )
        if not isinstance(value, int | float):
            raise BadInputError(f"{source}: optimizer option {key!r} must be a number, got {value!r}")
    try:
        return OPTIMIZERS[name](**options)
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{source}: optimizer {name}: {_describe(err)}") from None


def check_model(
    model: keras.Model, idim: int, n_classes: int, source: str = "model", regression: bool = False
) -> TargetEncoding:
    """Check the model takes ``idim`` inputs and has outputs for the classes (or the ``n_classes`` targets
    of a ``regression``); choose the target encoding."""
    if len(model.inputs if model.built else [None]) != 1:
        raise BadInputError(f"{source}: the model must have exactly one input, it has {len(model.inputs)}")
    try:
        outputs = model(np.zeros((2, idim), dtype=np.float32), training=False)
    except Exception as err:
        expected = ""
        if model.built and model.inputs:
            expected = f" (the model expects {model.inputs[0].shape[-1]})"
        raise BadInputError(
            f"{source}: the model does not accept the data's {idim} input features{expected}: "
            f"{_describe(err)}"
        ) from None
    if isinstance(outputs, list | tuple | dict):
        raise BadInputError(f"{source}: the model must have exactly one output")
    shape = tuple(outputs.shape)
    if len(shape) != 2:
        raise BadInputError(f"{source}: the model's output must be [batch, units], got shape {shape}")
    n_outputs = int(shape[1])
    if regression:
        return _check_regression(model, n_outputs, n_classes, source)
    if n_outputs == 1:
        if n_classes != 2:
            raise BadInputError(
                f"{source}: the model has 1 output unit but the data has {n_classes} classes; "
                f"use {n_classes} units (softmax)"
            )
        return TargetEncoding("binary", 1)
    if n_outputs != n_classes:
        raise BadInputError(
            f"{source}: the model has {n_outputs} output units but the data has {n_classes} classes"
        )
    return TargetEncoding("sparse" if "sparse" in _loss_name(model.loss) else "onehot", n_outputs)


def _check_regression(model: keras.Model, n_outputs: int, n_targets: int, source: str) -> TargetEncoding:
    if n_outputs != n_targets:
        raise BadInputError(
            f"{source}: the model has {n_outputs} output unit(s) but params.json's target names {n_targets} "
            "branch(es); give one linear output unit per target"
        )
    loss = _loss_name(model.loss)
    if any(word in loss for word in CLASSIFICATION_LOSS_WORDS):
        raise BadInputError(
            f"{source}: loss {loss!r} trains a classifier; regression targets need a regression loss "
            "such as mse, mae or huber"
        )
    return TargetEncoding("regression", n_outputs)


def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return loss.lower()
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__
    return str(name).lower()
