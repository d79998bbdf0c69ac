"""ONNX export of non-TensorFlow models, checked with onnxruntime before the bundle is written.

Converters: ``torch.onnx.export`` (TorchScript exporter, dynamic batch axis), skl2onnx for scikit-learn,
onnxmltools for XGBoost. Every exported graph has the Keras bundle's signature: input ``inputs`` float32
[None, dim], output ``outputs`` float32 [None, 1] (probability of class 1, binary) or [None, n_classes], so
that TFaaS answers the same payloads whatever the framework. The ONNX outputs must match the framework's own
on the test events to ``TOLERANCE`` (relative and absolute); otherwise the bundle is published unservable.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from appliance.training.bundle import INPUT_NAME, OUTPUT_NAME
from appliance.training.frameworks import EstimatorModel, FrameworkModel, TorchModel

TOLERANCE = 1e-5
CHECK_EVENTS = 20_000  # test events compared (the first ones): enough to see a mismatch, quick to run
OPSET = 17
BASE_OPSET_FOR_ML_GRAPHS = 15  # the highest onnxmltools' XGBoost converter supports


@dataclass
class OnnxExport:
    """The converted model (``None`` when conversion failed) and whether it may be served, with the reason."""

    model_bytes: bytes | None
    servable: bool
    reason: str | None = None
    max_abs_diff: float | None = None
    checked_events: int = 0


def export_onnx(model: FrameworkModel, dim: int, check_x: np.ndarray) -> OnnxExport:
    """Convert ``model`` and compare onnxruntime's outputs with the framework's on ``check_x``."""
    try:
        data = _convert(model, dim)
    except Exception as err:  # converters raise many types for unsupported operators or estimators
        return OnnxExport(None, False, f"ONNX conversion failed: {_first_line(err)}")
    return check_onnx(data, model.predict, check_x[:CHECK_EVENTS])


def check_onnx(data: bytes, reference: object, x: np.ndarray) -> OnnxExport:
    """Run ``data`` with onnxruntime on ``x`` and compare with ``reference(x)`` to ``TOLERANCE``."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = np.ascontiguousarray(x, dtype=np.float32)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0] if len(x) else np.zeros((0, 1), np.float32)
    except Exception as err:
        return OnnxExport(data, False, f"onnxruntime cannot run the exported model: {_first_line(err)}")
    if not len(x):
        return OnnxExport(data, True, None, None, 0)
    expected = np.asarray(reference(x), dtype=np.float32)  # type: ignore[operator]
    if got.shape != expected.shape:
        return OnnxExport(data, False, f"ONNX outputs have shape {got.shape}, the model's {expected.shape}")
    difference = float(np.max(np.abs(got - expected)))
    if not np.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
        return OnnxExport(
            data,
            False,
            f"ONNX outputs differ from the model's by up to {difference:.3g} on {len(x)} test events "
            f"(tolerance {TOLERANCE} relative and absolute)",
            difference,
            len(x),
        )
    return OnnxExport(data, True, None, difference, len(x))


def _convert(model: FrameworkModel, dim: int) -> bytes:
    if isinstance(model, TorchModel):
        return _convert_torch(model, dim)
    if isinstance(model, EstimatorModel):
        return _convert_estimator(model, dim)
    raise TypeError(f"no ONNX converter for {type(model).__name__}")


def _convert_torch(model: TorchModel, dim: int) -> bytes:
    import torch

    module = model.probabilities_module().to("cpu").eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros((2, dim), dtype=torch.float32),),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    module.to(model.device)
    return buffer.getvalue()


def _convert_estimator(model: EstimatorModel, dim: int) -> bytes:
    """skl2onnx or onnxmltools, then the probabilities (binary: column 1 only), or a regressor's predictions,
    renamed ``outputs``."""
    import onnx
    from onnx import helper

    if model.framework == "xgboost":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        graph_model = onnxmltools.convert_xgboost(
            model.estimator, initial_types=[(INPUT_NAME, FloatTensorType([None, dim]))]
        )
    else:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType as SklFloatTensorType

        graph_model = convert_sklearn(
            model.estimator,
            initial_types=[(INPUT_NAME, SklFloatTensorType([None, dim]))],
            options={} if model.regression else {id(model.estimator): {"zipmap": False}},
            target_opset={"": OPSET, "ai.onnx.ml": 3},
        )
    if not any(o.domain in ("", "ai.onnx") for o in graph_model.opset_import):
        # A tree ensemble's graph may use only the ai.onnx.ml domain; the Slice below needs the default one.
        graph_model.opset_import.append(helper.make_opsetid("", BASE_OPSET_FOR_ML_GRAPHS))
    graph = graph_model.graph
    if model.regression:  # a regressor's converter outputs the predictions alone
        node = helper.make_node("Identity", [graph.output[0].name], [OUTPUT_NAME])
        width = model.n_classes
    elif model.n_classes == 2:
        probabilities = graph.output[1].name  # converters output (label, probabilities)
        starts = helper.make_tensor("outputs_start", onnx.TensorProto.INT64, [1], [1])
        ends = helper.make_tensor("outputs_end", onnx.TensorProto.INT64, [1], [2])
        axes = helper.make_tensor("outputs_axis", onnx.TensorProto.INT64, [1], [1])
        graph.initializer.extend([starts, ends, axes])
        node = helper.make_node(
            "Slice", [probabilities, "outputs_start", "outputs_end", "outputs_axis"], [OUTPUT_NAME]
        )
        width = 1
    else:
        probabilities = graph.output[1].name
        node = helper.make_node("Identity", [probabilities], [OUTPUT_NAME])
        width = model.n_classes
    graph.node.append(node)
    while len(graph.output):
        graph.output.pop()
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, [None, width]))
    onnx.checker.check_model(graph_model)
    return graph_model.SerializeToString()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__
