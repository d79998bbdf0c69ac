"""Serving a bundle's ``model.onnx`` (PyTorch, scikit-learn and XGBoost models) with onnxruntime.

:func:`load_onnx_model` gives the same :class:`~tfaas.predictor.LoadedModel` as the SavedModel loader
(``predict``: a float32 matrix [n, dim] in, a float32 matrix [n, outputs] out), so every endpoint, the raw
branch requests through the feature spec and the batcher work unchanged. A bundle's ``params.json`` says
``"runtime": "onnx"``; one marked ``"servable": false`` (its export failed or did not match its framework) is
refused with the reason the training recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from servicecore.errors import BadInputError, ConflictError
from tfaas.engine import first_line
from tfaas.predictor import INPUT_KEYS, OUTPUT_KEYS, LoadedModel, _pick
from tfaas.repository import ONNX_MODEL, Bundle

log = logging.getLogger(__name__)

ENGINE = "onnx"


def load_onnx_model(bundle: Bundle, threads: int = 1) -> LoadedModel:
    """Load ``model.onnx`` with ``threads`` intra-op threads (one by default: the workers are the
    parallelism); raise BadInputError naming the problem if it cannot be served, and ConflictError (409: the
    model exists, but in a state that cannot answer) for a bundle the training marked not servable."""
    if bundle.params.get("servable") is False:
        reason = bundle.params.get("unservable_reason") or "no reason recorded"
        raise ConflictError(f"model {bundle.name!r} is marked not servable: {reason}")
    path = bundle.path / str(bundle.params.get("model") or ONNX_MODEL)
    if not path.is_file():
        raise BadInputError(f"model {bundle.name!r} has no {path.name}")
    session = _session(path, threads, bundle.name)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    input_name = _pick(bundle.params, INPUT_KEYS, inputs, "input", bundle.name)
    output_name = _pick(bundle.params, OUTPUT_KEYS, outputs, "output", bundle.name)
    shape = inputs[input_name].shape
    if inputs[input_name].type != "tensor(float)" or len(shape) != 2 or not isinstance(shape[1], int):
        raise BadInputError(
            f"model {bundle.name!r}: input {input_name!r} must be a float matrix [None, dim], got "
            f"{inputs[input_name].type} {shape}"
        )
    dim = int(shape[1])
    out_shape = outputs[output_name].shape
    n_outputs = int(out_shape[-1]) if out_shape and isinstance(out_shape[-1], int) else None

    def run_onnx(matrix: np.ndarray) -> np.ndarray:
        feed = {input_name: np.ascontiguousarray(matrix, dtype=np.float32)}
        result = session.run([output_name], feed)[0]
        return np.asarray(result, dtype=np.float32).reshape(len(matrix), -1)

    model = LoadedModel(bundle, input_name, output_name, dim, n_outputs, ENGINE, run_onnx)
    log.info("loaded %s version %d (onnx engine, %d features)", bundle.name, bundle.version, dim)
    return model


def _session(path: Any, threads: int, name: str) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for a corrupt or foreign file
        raise BadInputError(f"model {name!r} is not a loadable ONNX model: {first_line(err)}") from None
