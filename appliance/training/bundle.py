"""The self-describing model bundle, and publishing it atomically into a model repository.

Layout and ``params.json`` keys are the contract with TFaaS (docs/architecture.md)::

    <bundle>/saved_model.pb variables/ assets/   SavedModel, signature serving_default: inputs -> outputs
             params.json labels.txt metrics.json loss.png and roc.png (a classifier: the unweighted ROC, the
             weighted one beside it) or residuals.png (a regression; labels.txt then names the targets)

A bundle is always built in a temporary directory beside its destination and renamed into place, so nobody
ever sees half of one. In a repository, ``REPO/<name>/<version>/`` is created by renaming a complete bundle
from ``REPO/.incoming/``; a version number is never reused, and an existing version is never overwritten.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from servicecore.errors import BadInputError
from servicecore.publishing import staging_directory

SIGNATURE = "serving_default"
INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
ONNX_FILE = "model.onnx"
NATIVE_DIRECTORY = "native"  # a non-TensorFlow model as its framework saves it (torch.save, joblib)


def params_document(
    name: str,
    features: Mapping[str, Any],
    version: int | None = None,
    runtime: str = "tensorflow",
    servable: bool = True,
    reason: str | None = None,
    framework: str = "keras",
) -> dict[str, Any]:
    """``params.json``: the original TFaaS keys, the signature, the version and the preprocessing contract.

    ``runtime`` says what serves the bundle: ``tensorflow`` (SavedModel) or ``onnx`` (``model.onnx``). A model
    whose ONNX export failed or did not match its framework is ``servable: false`` with the ``reason``."""
    document: dict[str, Any] = {
        "name": name,
        "model": ONNX_FILE if runtime == "onnx" else "saved_model.pb",
        "runtime": runtime,
        "framework": framework,
        "servable": servable,
        "labels": "labels.txt",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "inputNode": INPUT_NAME,
        "outputNode": OUTPUT_NAME,
        "signature": SIGNATURE,
        "features": dict(features),
    }
    if reason:
        document["unservable_reason"] = reason
    if version is not None:
        document["version"] = version
    return document


def export_saved_model(model: Any, path: Path, dim: int) -> None:
    """Save ``model`` with the signature ``serving_default``: ``inputs`` [None, dim] -> ``outputs``."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: tf.cast(model(inputs, training=False), tf.float32)}

    archive.add_endpoint(
        name=SIGNATURE, fn=serve, input_signature=[tf.TensorSpec([None, dim], tf.float32, name=INPUT_NAME)]
    )
    archive.write_out(str(path), verbose=False)


def write_bundle(
    destination: str | Path,
    *,
    model: Any,
    name: str,
    features: Mapping[str, Any],
    class_names: Sequence[str],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    roc: Mapping[str, Any] | None,
    onnx: Any = None,
    residuals: Mapping[str, Any] | None = None,
) -> Path:
    """Build the bundle in a temporary directory beside ``destination`` and rename it there.

    An existing bundle at ``destination`` is replaced (a new run of the same workflow); anything else that is
    not an empty directory is refused, so a typo in ``--fout`` cannot destroy unrelated files.
    """
    destination = Path(destination).absolute()
    check_output_directory(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(destination.parent, f".{destination.name}.")
    try:
        if onnx is None:
            export_saved_model(model, staging, int(features["dim"]))
            document = params_document(name, features)
        else:
            document = _write_framework_model(model, onnx, staging, name, features)
        _write_json(staging / "params.json", document)
        (staging / "labels.txt").write_text("".join(f"{label}\n" for label in class_names))
        _write_json(staging / "metrics.json", metrics)
        plot_loss(history, staging / "loss.png")
        if residuals is not None:
            plot_residuals(residuals, staging / "residuals.png")
        else:
            plot_roc(roc, class_names, staging / "roc.png")
        _replace_directory(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def _write_framework_model(
    model: Any, onnx: Any, staging: Path, name: str, features: Mapping[str, Any]
) -> dict[str, Any]:
    """``model.onnx`` when the export succeeded, and the model in its framework's own format beside it."""
    if onnx.model_bytes is not None:
        (staging / ONNX_FILE).write_bytes(onnx.model_bytes)
    native = staging / NATIVE_DIRECTORY
    native.mkdir()
    if model.framework == "torch":
        import torch

        torch.save(model.module.state_dict(), native / "state_dict.pt")
    else:
        import pickle

        import joblib

        try:
            joblib.dump(model.estimator, native / "estimator.joblib")
        except (pickle.PicklingError, AttributeError, TypeError):
            # A class defined in the user's model.py cannot be pickled once its module is gone; the
            # bundle's other files still describe the model, and model.onnx (when there is one) serves it.
            (native / "estimator.joblib").unlink(missing_ok=True)
    return params_document(
        name,
        features,
        runtime="onnx",
        servable=onnx.servable,
        reason=onnx.reason,
        framework=model.framework,
    )


def check_output_directory(destination: Path) -> None:
    """Refuse an output path that exists and is neither an empty directory nor an earlier bundle."""
    if not destination.exists():
        return
    if not destination.is_dir():
        raise BadInputError(f"output {str(destination)!r} exists and is not a directory")
    if any(destination.iterdir()) and not (destination / "params.json").is_file():
        raise BadInputError(
            f"output directory {str(destination)!r} is not empty and holds no model bundle; "
            "choose another --fout"
        )


def _replace_directory(staging: Path, destination: Path) -> None:
    """Rename ``staging`` to ``destination``; an earlier bundle there is moved aside first, then removed."""
    try:
        staging.rename(destination)
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
    old.rmdir()
    destination.rename(old)
    try:
        staging.rename(destination)
    except BaseException:
        old.rename(destination)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def plot_loss(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    epochs = [h["epoch"] for h in history]
    axes.plot(epochs, [h.get("loss") for h in history], marker="o", label="training")
    if any(h.get("val_loss") is not None for h in history):
        axes.plot(epochs, [h.get("val_loss") for h in history], marker="o", label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title("loss per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def plot_roc(roc: Mapping[str, Any] | None, class_names: Sequence[str], path: Path) -> None:
    """ROC curves on the test part: one curve for a binary problem, one per class (one-vs-rest) otherwise;
    with event weights, the weighted curves in a second panel beside the unweighted ones.

    ``roc`` is ``appliance.training.evaluation.roc_metrics``'s ``{"unweighted": ..., "weighted": ...}``."""
    from matplotlib.figure import Figure

    panels = [("ROC on the test part", (roc or {}).get("unweighted"))]
    if roc and roc.get("weighted"):
        panels = [("ROC on the test part (unweighted)", roc["unweighted"]), ("weighted", roc["weighted"])]
    figure = Figure(figsize=(5 * len(panels), 5), dpi=100)
    for axes, (title, curves) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        if curves:
            for label, curve in curves.items():
                axes.plot(curve["fpr"], curve["tpr"], label=f"{label} (AUC {curve['auc']:.3f})")
            axes.legend(loc="lower right")
        else:
            axes.text(0.5, 0.5, "no test events with two classes", ha="center")
        axes.set_xlabel("false positive rate" + (" (weighted)" if title == "weighted" else ""))
        axes.set_ylabel("true positive rate" + (" (weighted)" if title == "weighted" else ""))
        axes.set_title("weighted ROC on the test part" if title == "weighted" else title)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
    figure.tight_layout()
    figure.savefig(path)


def plot_residuals(residuals: Mapping[str, Any], path: Path) -> None:
    """Residual (prediction - target) against the target, one panel per regression target (a sample of the
    test events, ``appliance.training.evaluation.regression_metrics``)."""
    from matplotlib.figure import Figure

    names = list(residuals)
    figure = Figure(figsize=(5 * max(len(names), 1), 4), dpi=100)
    for axes, name in zip(figure.subplots(1, max(len(names), 1), squeeze=False)[0], names, strict=False):
        points = residuals[name]
        axes.scatter(points["target"], points["residual"], s=4, alpha=0.4)
        axes.axhline(0.0, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel(f"{name} (target)")
        axes.set_ylabel("prediction - target")
        axes.set_title(f"residuals of {name} on the test part")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
