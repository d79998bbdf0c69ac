"""Models of other frameworks than Keras: PyTorch modules and scikit-learn/XGBoost estimators.

One piece although above 400 lines: the PyTorch and the estimator adapters answer the same few calls of
the trainer (fit a chunk, predict, export), and reading them side by side shows that they do.

The trainer drives every framework through the same small interface (:class:`FrameworkModel`): train on the
stream's arrays for one epoch, predict class probabilities in the shape a Keras bundle outputs ([n, 1] for a
binary problem with one output, else [n, n_classes]), count parameters, and export to ONNX
(``appliance.training.onnx_export``). Keras models keep their own path in the trainer (``model.fit`` on
``tf.data``).

Options come from params.json's ``training`` object (``loss``, ``optimizer``, ``learning_rate``,
``max_sample_events``, ``allow_sample``), or for a PyTorch module from what ``model(idim)`` returns beside it:
``(module, {"loss": ...})`` or ``{"model": module, "loss": ..., "optimizer": ...}``, where ``loss`` and
``optimizer`` may also be a torch loss module or optimizer instance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from servicecore.errors import BadInputError

# Rows an estimator without partial_fit may hold in memory; more only when the user opts in (allow_sample).
DEFAULT_MAX_SAMPLE_EVENTS = 200_000
# loss name -> (target kind, what turns the module's outputs into probabilities)
TORCH_LOSSES = {
    "bce": ("binary", "none"),
    "binary_crossentropy": ("binary", "none"),
    "bce_with_logits": ("binary", "sigmoid"),
    "cross_entropy": ("sparse", "softmax"),
    "sparse_categorical_crossentropy": ("sparse", "softmax"),
    "mse": ("regression", "none"),
    "l1": ("regression", "none"),
}
TORCH_OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
TRAINING_OPTIONS = (
    "loss",
    "optimizer",
    "learning_rate",
    "max_sample_events",
    "allow_sample",
    "feature_cache_mb",
)
EPSILON = 1e-7

Batch = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # features, class indices, sample weights


def cross_entropy(probabilities: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean cross-entropy of class probabilities [n, n_classes] (a framework-neutral loss for metrics),
    weighted by the events' ``weights`` when given."""
    picked = np.clip(probabilities[np.arange(len(y)), y], EPSILON, 1.0)
    return _mean(-np.log(picked), weights)


def squared_error(predictions: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean squared error over events (averaged over targets), weighted by ``weights`` when given."""
    difference = np.asarray(predictions, np.float64) - targets.reshape(len(targets), -1)
    per_event = np.mean(difference**2, axis=1)
    return _mean(per_event, weights)


def _mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    if weights is None or float(np.sum(weights)) <= 0:
        return float(np.mean(values))
    return float(np.average(values, weights=weights))


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """[n, n_classes] from bundle outputs ([n, 1] binary: the probability of class 1)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.shape[1] == 1:
        return np.column_stack([1.0 - outputs[:, 0], outputs[:, 0]])
    return outputs


def training_options(options: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(TRAINING_OPTIONS))
    if unknown:
        raise BadInputError(
            f"{source}: unknown training option(s) {', '.join(unknown)}; known: {', '.join(TRAINING_OPTIONS)}"
        )
    bound = options.get("max_sample_events", DEFAULT_MAX_SAMPLE_EVENTS)
    if not isinstance(bound, int) or isinstance(bound, bool) or bound <= 0:
        raise BadInputError(f"{source}: training.max_sample_events must be a positive integer, got {bound!r}")
    if not isinstance(options.get("allow_sample", False), bool):
        raise BadInputError(f"{source}: training.allow_sample must be true or false")
    return dict(options)


class FrameworkModel:
    """What the trainer needs of a non-Keras model."""

    framework = ""
    encoding_mode = "binary"  # "binary" ([n, 1] outputs) or "sparse" ([n, n_classes] outputs)
    single_pass = False  # trains once on a bounded sample: epochs after the first add nothing
    sample_note: str | None = None

    def train_epoch(self, batches: Iterator[Batch], epoch: int) -> float | None:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def count_params(self) -> int | None:
        return None

    def check_stream(self, train_events: int) -> None:
        """Refuse data the model cannot take (an estimator's bounded sample) before any pass."""


# -- PyTorch -----------------------------------------------------------------------------------------------


class TorchModel(FrameworkModel):
    framework = "torch"

    def __init__(
        self,
        module: Any,
        loss: Any,
        optimizer: Any,
        idim: int,
        n_classes: int,
        batch_size: int,
        source: str,
        regression: bool = False,
    ) -> None:
        import torch

        self.torch = torch
        self.regression = regression
        self.module = module
        self.batch_size = batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.module.to(self.device)
        self.loss_name, self.loss_fn = _torch_loss(loss, source)
        self.encoding_mode, self.squash = TORCH_LOSSES[self.loss_name]
        self.optimizer = _torch_optimizer(optimizer, module, source)
        self.n_outputs = self._check_outputs(idim, n_classes, source)

    def _check_outputs(self, idim: int, n_classes: int, source: str) -> int:
        torch = self.torch
        self.module.eval()
        try:
            with torch.no_grad():
                outputs = self.module(torch.zeros((2, idim), dtype=torch.float32, device=self.device))
        except Exception as err:
            raise BadInputError(
                f"{source}: the PyTorch module does not accept the data's {idim} input features: "
                f"{_describe(err)}"
            ) from None
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            raise BadInputError(f"{source}: the PyTorch module must return one tensor [batch, units]")
        units = int(outputs.shape[1])
        if (self.encoding_mode == "regression") != self.regression:
            raise BadInputError(
                f"{source}: loss {self.loss_name!r} "
                + (
                    "trains a classifier; regression targets need mse or l1"
                    if self.regression
                    else "is a regression loss; the data has classes (params.json sets no target)"
                )
            )
        if self.encoding_mode == "regression" and units != n_classes:
            raise BadInputError(
                f"{source}: the module has {units} output unit(s) but params.json's target names "
                f"{n_classes} branch(es)"
            )
        if self.encoding_mode == "binary" and (units != 1 or n_classes != 2):
            raise BadInputError(
                f"{source}: loss {self.loss_name!r} needs 1 output unit and 2 classes; the module has "
                f"{units} unit(s) and the data {n_classes} classes (use cross_entropy for more classes)"
            )
        if self.encoding_mode == "sparse" and units != n_classes:
            raise BadInputError(
                f"{source}: the module has {units} output units but the data has {n_classes} classes"
            )
        return units

    def probabilities_module(self) -> Any:
        """The module followed by what turns its outputs into probabilities: what is exported and served."""
        torch = self.torch
        if self.squash == "sigmoid":
            return torch.nn.Sequential(self.module, torch.nn.Sigmoid())
        if self.squash == "softmax":
            return torch.nn.Sequential(self.module, torch.nn.Softmax(dim=1))
        return self.module

    def train_epoch(self, batches: Iterator[Batch], epoch: int) -> float | None:
        torch = self.torch
        self.module.train()
        total, count = 0.0, 0
        for x_chunk, y_chunk, w_chunk in batches:
            for start in range(0, len(y_chunk), self.batch_size):
                x = torch.tensor(x_chunk[start : start + self.batch_size], dtype=torch.float32)
                y = y_chunk[start : start + self.batch_size]
                outputs = self.module(x.to(self.device))
                if self.encoding_mode == "regression":
                    target = torch.from_numpy(y.astype(np.float32).reshape(len(y), -1)).to(self.device)
                elif self.encoding_mode == "binary":
                    target = torch.from_numpy(y.astype(np.float32).reshape(-1, 1)).to(self.device)
                else:
                    target = torch.from_numpy(y.astype(np.int64)).to(self.device)
                losses = self.loss_fn(outputs, target).reshape(len(y), -1).mean(dim=1)
                if w_chunk is not None:
                    weights = torch.tensor(w_chunk[start : start + self.batch_size], device=self.device)
                    losses = losses * weights
                loss = losses.mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
        return total / count if count else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        module = self.probabilities_module()
        module.eval()
        with torch.no_grad():
            outputs = module(torch.tensor(np.asarray(x), dtype=torch.float32, device=self.device))
        return outputs.cpu().numpy().astype(np.float32).reshape(len(x), -1)

    def count_params(self) -> int | None:
        return int(sum(p.numel() for p in self.module.parameters()))


def _torch_loss(loss: Any, source: str) -> tuple[str, Any]:
    import torch

    classes = {
        torch.nn.BCELoss: "bce",
        torch.nn.BCEWithLogitsLoss: "bce_with_logits",
        torch.nn.CrossEntropyLoss: "cross_entropy",
        torch.nn.MSELoss: "mse",
        torch.nn.L1Loss: "l1",
    }
    if loss is None:
        raise BadInputError(
            f"{source}: a PyTorch module needs a loss: set training.loss in params.json "
            f"({', '.join(TORCH_LOSSES)}) or return (module, {{'loss': ...}}) from model(idim)"
        )
    if isinstance(loss, torch.nn.Module):
        name = next((n for cls, n in classes.items() if isinstance(loss, cls)), None)
        if name is None:
            raise BadInputError(
                f"{source}: loss {type(loss).__name__} is not supported; use BCELoss, BCEWithLogitsLoss, "
                "CrossEntropyLoss, MSELoss or L1Loss"
            )
    elif isinstance(loss, str) and loss.lower() in TORCH_LOSSES:
        name = loss.lower()
    else:
        raise BadInputError(
            f"{source}: unknown loss {loss!r} for a PyTorch module; known: {', '.join(TORCH_LOSSES)}"
        )
    function = {
        "bce": torch.nn.BCELoss,
        "binary_crossentropy": torch.nn.BCELoss,
        "bce_with_logits": torch.nn.BCEWithLogitsLoss,
        "mse": torch.nn.MSELoss,
        "l1": torch.nn.L1Loss,
    }.get(name, torch.nn.CrossEntropyLoss)
    return name, function(reduction="none")


def _torch_optimizer(optimizer: Any, module: Any, source: str) -> Any:
    import torch

    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    spec = optimizer if isinstance(optimizer, Mapping) else {"name": optimizer or "adam"}
    name = str(spec.get("name", "adam")).lower()
    if name not in TORCH_OPTIMIZERS:
        raise BadInputError(f"{source}: unknown optimizer {name!r}; known: {', '.join(TORCH_OPTIMIZERS)}")
    rate = spec.get("learning_rate", 1e-3)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        raise BadInputError(f"{source}: learning_rate must be a positive number, got {rate!r}")
    factory = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
        "adagrad": torch.optim.Adagrad,
    }[name]
    return factory(module.parameters(), lr=float(rate))


def torch_model(
    returned: Any,
    options: Mapping[str, Any],
    idim: int,
    n_classes: int,
    batch_size: int,
    source: str,
    regression: bool = False,
) -> TorchModel:
    """A :class:`TorchModel` from what ``model(idim)`` returned and params.json's ``training`` options."""
    import torch

    settings = dict(options)
    if isinstance(returned, tuple):
        module, *extra = returned
        if len(extra) != 1 or not isinstance(extra[0], Mapping):
            raise BadInputError(
                f"{source}: model(idim) may return (module, {{'loss': ..., 'optimizer': ...}})"
            )
        settings |= dict(extra[0])
    elif isinstance(returned, Mapping):
        module = returned.get("model")
        settings |= {k: v for k, v in returned.items() if k != "model"}
    else:
        module = returned
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"{source}: model(idim) returned no PyTorch module beside its options")
    optimizer = settings.get("optimizer", "adam")
    if isinstance(optimizer, str):
        optimizer = {"name": optimizer, "learning_rate": settings.get("learning_rate", 1e-3)}
    loss = settings.get("loss", "mse" if regression else None)
    return TorchModel(module, loss, optimizer, idim, n_classes, batch_size, source, regression)


# -- scikit-learn and XGBoost --------------------------------------------------------------------------------


class EstimatorModel(FrameworkModel):
    """A classifier with ``predict_proba`` (or, for regression targets, a regressor with ``predict``):
    ``partial_fit`` per chunk, else ``fit`` once on a bounded sample."""

    def __init__(
        self,
        estimator: Any,
        n_classes: int,
        options: Mapping[str, Any],
        seed: int,
        source: str,
        regression: bool = False,
    ) -> None:
        self.estimator = estimator
        self.n_classes = n_classes  # the number of targets of a regression
        self.source = source
        self.regression = regression
        self.framework = "xgboost" if type(estimator).__module__.startswith("xgboost") else "sklearn"
        self.encoding_mode = "regression" if regression else "binary" if n_classes == 2 else "sparse"
        self.streaming = hasattr(estimator, "partial_fit")
        self.single_pass = not self.streaming
        self.max_sample = int(options.get("max_sample_events", DEFAULT_MAX_SAMPLE_EVENTS))
        self.allow_sample = bool(options.get("allow_sample", False))
        self.rng = np.random.default_rng(seed)
        self.started = False
        # Extra arguments of fit: a warm start gives XGBoost the booster to go on from (xgb_model).
        self.fit_options: dict[str, Any] = {}

    def check_stream(self, train_events: int) -> None:
        if self.streaming or train_events <= self.max_sample:
            return
        if not self.allow_sample:
            raise BadInputError(
                f"{self.source}: {type(self.estimator).__name__} cannot learn from a stream (no partial_fit) "
                f"and the data has about {train_events} training events, more than the in-memory sample of "
                f"{self.max_sample} (training.max_sample_events); raise it, set training.allow_sample to "
                "train on a random sample, or use an estimator with partial_fit"
            )
        self.sample_note = f"trained on a random sample of {self.max_sample} of about {train_events} events"

    def train_epoch(self, batches: Iterator[Batch], epoch: int) -> float | None:
        if self.streaming:
            return self._partial_fit_epoch(batches)
        if epoch > 0:
            return None
        return self._fit_sample(batches)

    def _partial_fit_epoch(self, batches: Iterator[Batch]) -> float | None:
        total, count = 0.0, 0
        for x, y, w in batches:
            if self.started:  # progressive validation: the loss on each chunk before learning from it
                total += self._loss(x, y, w) * len(y)
                count += len(y)
            options: dict[str, Any] = {} if w is None else {"sample_weight": w}
            if not self.regression:
                options["classes"] = np.arange(self.n_classes)
            self.estimator.partial_fit(x, self._fit_targets(y), **options)
            self.started = True
        return total / count if count else None

    def _fit_sample(self, batches: Iterator[Batch]) -> float | None:
        """Reservoir-sample at most ``max_sample`` training events of the pass, then ``fit`` once."""
        xs: np.ndarray | None = None
        ys = (
            np.zeros((self.max_sample, self.n_classes), dtype=np.float32)
            if self.regression
            else np.zeros(self.max_sample, dtype=np.int64)
        )
        ws = np.ones(self.max_sample, dtype=np.float32)
        weighted, seen = False, 0
        for x, y, w in batches:
            if xs is None:
                xs = np.zeros((self.max_sample, x.shape[1]), dtype=np.float32)
            index = seen + np.arange(len(y))
            slots = np.where(index < self.max_sample, index, self.rng.integers(0, index + 1))
            keep = slots < self.max_sample
            xs[slots[keep]], ys[slots[keep]] = x[keep], y[keep]
            if w is not None:
                weighted = True
                ws[slots[keep]] = w[keep]
            seen += len(y)
        if xs is None or seen == 0:
            return None
        n = min(seen, self.max_sample)
        x, y = xs[:n], ys[:n]
        fit_options = {"sample_weight": ws[:n]} if weighted else {}
        try:
            self.estimator.fit(x, self._fit_targets(y), **fit_options, **self.fit_options)
        except (ValueError, TypeError) as err:
            raise BadInputError(
                f"{self.source}: {type(self.estimator).__name__}.fit failed: {_describe(err)}"
            ) from None
        if seen > self.max_sample:
            self.sample_note = f"trained on a random sample of {n} of {seen} training events"
        return self._loss(x, y, ws[:n] if weighted else None)

    def _fit_targets(self, y: np.ndarray) -> np.ndarray:
        """Class indices, or a regression's targets: 1-D for one target, as scikit-learn's regressors want."""
        return y[:, 0] if self.regression and y.shape[1] == 1 else y

    def _loss(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
        if self.regression:
            return squared_error(self.predict(x), y, w)
        return cross_entropy(class_probabilities(self.predict(x)), y, w)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.regression:
            values = self.estimator.predict(np.asarray(x, dtype=np.float32))
            return np.asarray(values, dtype=np.float32).reshape(len(x), -1)
        probabilities = np.asarray(
            self.estimator.predict_proba(np.asarray(x, dtype=np.float32)), dtype=np.float32
        )
        return probabilities[:, 1:2] if self.n_classes == 2 else probabilities


def is_estimator(value: Any) -> bool:
    return hasattr(value, "fit") and hasattr(value, "predict_proba") and hasattr(value, "get_params")


def is_regressor(value: Any) -> bool:
    """A scikit-learn or XGBoost estimator without class probabilities: one for regression targets."""
    return hasattr(value, "fit") and hasattr(value, "predict") and hasattr(value, "get_params")


def is_torch_module(value: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(value, tuple) and value:
        value = value[0]
    elif isinstance(value, Mapping):
        value = value.get("model")
    return isinstance(value, torch.nn.Module)


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


# -- the declarative JSON model with "framework": "torch" ---------------------------------------------------

TORCH_ACTIVATIONS = {
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "elu": "ELU",
    "selu": "SELU",
    "gelu": "GELU",
    "swish": "SiLU",
    "silu": "SiLU",
    "leaky_relu": "LeakyReLU",
    "softplus": "Softplus",
    "softsign": "Softsign",
    "relu6": "ReLU6",
    "mish": "Mish",
    "softmax": "Softmax",
}
# Keras loss names of a JSON model -> the logits loss the module is trained with (its last sigmoid or softmax
# is left out of the module and put back by the export and the predictions).
TORCH_JSON_LOSSES = {
    "binary_crossentropy": "bce_with_logits",
    "sparse_categorical_crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "mse": "mse",
    "mean_squared_error": "mse",
    "mae": "l1",
    "mean_absolute_error": "l1",
}


def build_torch_json_model(
    data: Mapping[str, Any],
    idim: int,
    n_classes: int,
    source: str,
    check_layer: Any,
    regression: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """A ``torch.nn.Sequential`` from a JSON model's layers (checked by ``check_layer``, the Keras builder's
    own checks), and its training options (loss, optimizer, learning rate)."""
    import torch

    layers_data = data.get("layers")
    if not isinstance(layers_data, list) or not layers_data:
        raise BadInputError(f'{source}: "layers" must be a non-empty list of layer objects')
    modules: list[Any] = []
    width = idim
    last_activation = "linear"
    for i, layer in enumerate(layers_data):
        where = f"{source}: layer {i + 1}"
        kind, options = check_layer(layer, where)
        activation = options.get("activation", "linear")
        if kind == "Dense":
            modules.append(torch.nn.Linear(width, options["units"], bias=options.get("use_bias", True)))
            width = options["units"]
        elif kind == "Dropout":
            modules.append(torch.nn.Dropout(options["rate"]))
        elif kind == "BatchNormalization":
            momentum = 1.0 - options.get("momentum", 0.99)  # Keras keeps the old share, torch the new one
            modules.append(torch.nn.BatchNorm1d(width, eps=options.get("epsilon", 1e-3), momentum=momentum))
        elif kind == "LayerNormalization":
            modules.append(torch.nn.LayerNorm(width, eps=options.get("epsilon", 1e-3)))
        elif kind != "Activation":
            raise BadInputError(f'{where}: {kind} is not available with "framework": "torch"')
        if kind in ("Dense", "Activation") and activation != "linear":
            if activation not in TORCH_ACTIVATIONS:
                raise BadInputError(f"{where}: activation {activation!r} is not available with PyTorch")
            name = TORCH_ACTIVATIONS[activation]
            modules.append(getattr(torch.nn, name)(dim=1) if name == "Softmax" else getattr(torch.nn, name)())
        last_activation = activation if kind in ("Dense", "Activation") else last_activation
    default = "binary_crossentropy" if width == 1 else "sparse_categorical_crossentropy"
    loss = data.get("loss", "mse" if regression else default)
    if not isinstance(loss, str) or loss not in TORCH_JSON_LOSSES:
        raise BadInputError(
            f"{source}: loss {loss!r} is not available with PyTorch; known: {', '.join(TORCH_JSON_LOSSES)}"
        )
    if last_activation not in ("sigmoid", "softmax", "linear"):
        raise BadInputError(f"{source}: the last layer's activation must be sigmoid, softmax or linear")
    if last_activation != "linear" and TORCH_JSON_LOSSES[loss] not in ("mse", "l1"):
        modules.pop()  # trained on logits, squashed again when predicting and in the export
    optimizer = data.get("optimizer", "adam")
    if not isinstance(optimizer, str | Mapping):
        raise BadInputError(f'{source}: "optimizer" is a name or an object with a "name", got {optimizer!r}')
    spec = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer)
    extra = sorted(set(spec) - {"name", "learning_rate"})
    if extra:
        listed = ", ".join(extra)
        raise BadInputError(f"{source}: optimizer option(s) {listed} are not available with PyTorch")
    settings = {"loss": TORCH_JSON_LOSSES[loss], "optimizer": spec.get("name", "adam")}
    if "learning_rate" in spec:
        settings["learning_rate"] = spec["learning_rate"]
    return torch.nn.Sequential(*modules), settings
