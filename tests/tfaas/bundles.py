"""Model bundles for the TFaaS tests: small Keras models exported with the contract's signature.

``serving_default``: input ``inputs`` float32 [None, dim] -> output ``outputs``; plus params.json and
labels.txt.
Written independently of appliance.training.bundle so that TFaaS is tested against the contract itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def mlp(dim: int, hidden: tuple[int, ...], outputs: int = 1, seed: int = 0, activation: str = "relu") -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((dim,), name="inputs")
    x = inputs
    for units in hidden:
        x = keras.layers.Dense(units, activation=activation)(x)
    final = "sigmoid" if outputs == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Dense(outputs, activation=final)(x))


def residual(dim: int, seed: int = 0) -> Any:
    """A graph the NumPy engine refuses (LayerNormalization's moments): must run in TensorFlow."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((dim,), name="inputs")
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Concatenate()([x, inputs])
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def export(model: Any, path: Path, dim: int) -> None:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda inputs: {"outputs": model(inputs, training=False)},
        input_signature=[tf.TensorSpec([None, dim], tf.float32, name="inputs")],
    )
    archive.write_out(str(path), verbose=False)


def write_bundle(
    path: Path,
    model: Any,
    name: str,
    dim: int,
    labels: list[str],
    params: dict[str, Any] | None = None,
    old_keys: bool = False,
) -> Path:
    """A complete bundle at ``path`` (which must not exist); ``old_keys`` writes inputNode/outputNode only."""
    export(model, path, dim)
    document: dict[str, Any] = {"name": name, "model": "saved_model.pb", "labels": "labels.txt"}
    if old_keys:
        document.update(inputNode="inputs", outputNode="outputs")
    else:
        document.update(input_name="inputs", output_name="outputs", signature="serving_default")
    document.update(params or {})
    (path / "params.json").write_text(json.dumps(document))
    (path / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    return path


def reference_predict(bundle: Path, x: np.ndarray) -> np.ndarray:
    """The numbers the SavedModel itself gives, called directly through TensorFlow."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(bundle)).signatures["serving_default"]
    return signature(inputs=tf.constant(np.asarray(x, dtype=np.float32)))["outputs"].numpy()
