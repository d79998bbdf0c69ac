"""The TFaaS Flask app: the original TFaaS API, TF Serving REST, KServe v2, health, metrics and OpenAPI.

Every error is JSON ``{"error": message}``, with a 4xx status for bad input: bad input never gives a 500.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import socket
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from flask import Blueprint, Flask, Response, g, request
from google.protobuf.message import DecodeError

from servicecore.auth import require_owner
from servicecore.errors import (
    BadInputError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from servicecore.http import install_error_handlers, json_body
from servicecore.naming import check_name
from servicecore.safetar import extract_archive
from tfaas import proto
from tfaas.fast_json import ValuesDecoder
from tfaas.identity import install_auth
from tfaas.metrics import Metrics
from tfaas.openapi import openapi_document
from tfaas.predictor import LoadedModel, ModelStore, load_model, to_matrix
from tfaas.repository import SAVED_MODEL, ModelNotFoundError, read_bundle
from tfaas.settings import Settings

log = logging.getLogger(__name__)

SERVER_NAME = "tfaas"
SERVER_VERSION = "2.0.0"
# Paths (below the URL prefix) an authenticating front or hook must leave open: probes and monitoring.
# curl -d sends application/x-www-form-urlencoded unless told otherwise; the original server accepted it.
JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded", "text/plain", ""})
PROTO_TYPES = frozenset(
    {"application/octet-stream", "application/x-protobuf", "application/protobuf",
     "application/vnd.google.protobuf", ""}
)  # fmt: skip
TAR_TYPES = frozenset(
    {"application/x-tar", "application/gzip", "application/x-gzip", "application/x-gtar",
     "application/x-compressed-tar", "application/octet-stream"}
)  # fmt: skip
KSERVE_DTYPES = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}
KSERVE_NUMERIC = frozenset(KSERVE_DTYPES)
# KServe v2 binary data extension (Triton): the JSON header's length; the tensors' raw bytes follow it.
BINARY_HEADER = "Inference-Header-Content-Length"


def create_app(settings: Settings) -> Flask:
    """Build the app from one settings object; every worker calls this once after the fork."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    metrics = Metrics()
    store = ModelStore(settings, on_batch=metrics.batch_rows.observe, on_change=metrics.loaded_models.set)
    app.extensions["tfaas"] = store
    if settings.preload:
        store.start_loading()
    else:
        store.ready.set()
    blueprint = Blueprint("tfaas", __name__, url_prefix=settings.base or None)
    _original_api(blueprint, store, settings)
    _tf_serving_api(blueprint, store, settings)
    _kserve_api(blueprint, store, settings)
    _service_api(blueprint, store, settings, metrics)
    app.register_blueprint(blueprint)
    _install_metrics_and_errors(app, metrics)
    install_auth(app, settings)
    if not settings.auth:
        # Authentication hooks run inside Flask, which the lane bypasses: with auth on, every request goes
        # through Flask.
        app.wsgi_app = JsonFastLane(app.wsgi_app, store, settings, metrics)  # type: ignore[method-assign]
    return app


class JsonFastLane:
    """WSGI middleware that answers the hot path, ``POST /json`` with ``values``, without Flask's dispatch.

    Flask's request machinery costs several times what the NumPy engine needs to run a small MLP, and
    single-row ``/json`` requests are what clients of the original TFaaS send. The lane handles only a
    well-formed request that succeeds; anything else (raw values, a bad body, an unknown model, any
    error) is handed, body intact, to the Flask view, which is the reference implementation and formats
    every error. So the lane adds speed but no behaviour.
    """

    def __init__(self, app: Any, store: ModelStore, settings: Settings, metrics: Metrics) -> None:
        self._app = app
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._decoder = ValuesDecoder()
        self._paths = {f"{settings.base}/json": "json", f"{settings.base}/predict/json": "predict_json"}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        endpoint = self._paths.get(environ.get("PATH_INFO", ""))
        if endpoint is None or environ.get("REQUEST_METHOD") != "POST":
            return self._app(environ, start_response)
        started = time.perf_counter()
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if mimetype not in JSON_TYPES or not 0 <= length <= self._settings.max_body_bytes:
            return self._app(environ, start_response)
        body = environ["wsgi.input"].read(length)
        payload = self._answer(body)
        if payload is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self._app(environ, start_response)
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        )
        self._metrics.observe(endpoint, "POST", 200, time.perf_counter() - started)
        return [payload]

    def _answer(self, body: bytes) -> bytes | None:
        decoded = self._decoder.decode(body)
        if decoded is None:
            return None
        try:
            version = _version(decoded.version)
        except ServiceError:
            return None
        store = self._store
        store.enter()
        try:
            model = store.get(decoded.model, version)
            matrix, single = to_matrix(decoded.values, model.dim, self._settings.max_batch_rows)
            result = model.predict(matrix)
        except Exception:  # the Flask view repeats the request and answers the error properly
            return None
        finally:
            store.leave()
        return _dumps(np.ascontiguousarray(result[0] if single else result))


# -- request helpers -------------------------------------------------------------------------------------


def _dumps(data: Any) -> bytes:
    """JSON with NumPy arrays written directly (orjson is several times faster than json on numbers)."""
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(data: Any, status: int = 200) -> Response:
    return Response(_dumps(data), status=status, mimetype="application/json")


def _version(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise BadInputError(f"version must be a positive integer, got {value!r}") from None
    if version < 1 or (isinstance(value, float) and value != version) or isinstance(value, bool):
        raise BadInputError(f"version must be a positive integer, got {value!r}")
    return version


def _model_name(body: Mapping[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadInputError('say which model to use with "model": "<name>"')
    return name


def _raw_matrix(model: LoadedModel, columns: Mapping[str, Any], max_rows: int) -> np.ndarray:
    """Raw branch values by name, turned into the model input by the bundle's own FeatureSpec."""
    spec = model.features
    if spec is None:
        raise BadInputError(
            f"model {model.bundle.name!r} has no feature spec in its params.json: send normalised values"
        )
    missing = [b for b in spec.input_branches if b not in columns]
    if missing:
        raise BadInputError(f"raw values lack the branches {missing} (the model needs {spec.input_branches})")
    import awkward as ak

    for branch in spec.input_branches:
        if not isinstance(columns[branch], list | np.ndarray | ak.Array):
            raise BadInputError(f"raw branch {branch!r} must be a list with one entry per event")
    lengths = {len(columns[b]) for b in spec.input_branches}
    if lengths == {0}:
        raise BadInputError("raw values hold no events")
    if len(lengths) > 1:
        raise BadInputError(f"raw branches have different numbers of events: {sorted(lengths)}")
    if lengths.pop() > max_rows:
        raise BadInputError(f"at most {max_rows} events per request")
    try:
        return spec.transform({b: columns[b] for b in spec.input_branches})
    except (ValueError, TypeError) as err:  # BadInputError, raised for most bad values, passes through
        raise BadInputError(f"raw values are not numbers of the expected shape: {err}") from None


def _events_to_columns(events: Any) -> dict[str, Any]:
    """``[{"MET_pt": 12.5, "Jet_pt": [50.1, 20.3]}, ...]`` to columns, without a Python loop per event."""
    import awkward as ak

    if not isinstance(events, list) or not events:
        raise BadInputError("events must be a non-empty list of objects, one per event")
    try:
        array = ak.from_iter(events, highlevel=True)
    except (ValueError, TypeError) as err:
        raise BadInputError(f"events are not a list of objects of numbers: {err}") from None
    if not array.fields:
        raise BadInputError("events must be objects that map branch names to values")
    return {field: array[field] for field in array.fields}


def _matrix_from_json(model: LoadedModel, body: Mapping[str, Any], max_rows: int) -> tuple[np.ndarray, bool]:
    given = [key for key in ("values", "raw", "events") if key in body]
    if len(given) != 1:
        raise BadInputError('send exactly one of "values", "raw" (columns) or "events" (rows)')
    if "values" in body:
        return to_matrix(body["values"], model.dim, max_rows)
    if "raw" in body:
        if not isinstance(body["raw"], dict):
            raise BadInputError("raw must map branch names to lists with one entry per event")
        return _raw_matrix(model, body["raw"], max_rows), False
    return _raw_matrix(model, _events_to_columns(body["events"]), max_rows), False


# -- the original TFaaS API ------------------------------------------------------------------------------


def _original_api(bp: Blueprint, store: ModelStore, settings: Settings) -> None:
    def predict_json() -> Response:
        body = json_body()
        store.enter()
        try:
            model = store.get(_model_name(body), _version(body.get("version")))
            matrix, single = _matrix_from_json(model, body, settings.max_batch_rows)
            result = model.predict(matrix)
        finally:
            store.leave()
        return _json(np.ascontiguousarray(result[0] if single else result))

    def predict_proto() -> Response:
        if request.mimetype not in PROTO_TYPES:
            raise UnsupportedMediaTypeError(
                f"unsupported content type {request.mimetype!r}: send application/octet-stream"
            )
        try:
            row = proto.Row.FromString(request.get_data(cache=False))
        except DecodeError as err:
            raise BadInputError(f"the body is not a serialized tfaaspb.Row: {err}") from None
        if not row.model:
            raise BadInputError("the Row names no model")
        store.enter()
        try:
            model = store.get(row.model)
            matrix, _ = to_matrix(np.asarray(row.value, dtype=np.float32), model.dim, 1, "Row.value")
            result = model.predict(matrix)[0]
        finally:
            store.leave()
        labels = model.bundle.labels
        predictions = proto.Predictions()
        for index, probability in enumerate(result.tolist()):
            predictions.prediction.add(
                label=labels[index] if index < len(labels) else str(index), probability=probability
            )
        return Response(predictions.SerializeToString(), mimetype="application/octet-stream")

    bp.add_url_rule("/json", "json", predict_json, methods=["POST"])
    bp.add_url_rule("/predict/json", "predict_json", predict_json, methods=["POST"])
    bp.add_url_rule("/proto", "proto", predict_proto, methods=["POST"])
    bp.add_url_rule("/predict/proto", "predict_proto", predict_proto, methods=["POST"])

    @bp.get("/models")
    def models() -> Response:
        listing = []
        for _name, versions in sorted(store.snapshot().items()):
            latest = versions[max(versions)]
            listing.append({**latest.describe(), "versions": sorted(versions)})
        return _json(listing)

    @bp.get("/params/<name>")
    def params(name: str) -> Response:
        return _json(store.bundle(name, _version(request.args.get("version"))).describe())

    @bp.delete("/delete")
    @bp.delete("/delete/<name>")
    def delete(name: str | None = None) -> Response:
        version = _version(request.args.get("version"))
        if name is None:
            if request.mimetype == "application/json":
                body = json_body()
                name, version = body.get("model"), _version(body.get("version", version))
            else:
                name = request.form.get("model")
                version = _version(request.form.get("version", version))
        if not isinstance(name, str) or not name:
            raise BadInputError("say which model to delete: DELETE /delete/<model> or form field 'model'")
        require_owner(name)
        deleted = store.repository.delete(name, version)
        store.refresh(force=True)
        return _json({"deleted": name, "versions": deleted})

    @bp.post("/upload")
    def upload() -> tuple[Response, int] | Response:
        request.max_content_length = settings.max_upload_bytes
        with store.repository.staging() as staging:
            if request.mimetype == "multipart/form-data":
                name, bundle_dir = _stage_multipart(staging, settings)
            elif request.mimetype in TAR_TYPES:
                name, bundle_dir = _stage_tar(staging, settings, request.args.get("name"))
            else:
                raise UnsupportedMediaTypeError(
                    f"unsupported content type {request.mimetype!r}: send multipart/form-data "
                    "or a (gzipped) tar bundle",
                )
            require_owner(name)  # before loading the model: a refusal costs nothing
            _check_bundle(name, bundle_dir)
            _, version = store.repository.publish(bundle_dir, name)
        store.refresh(force=True)
        return _json({"model": name, "version": version}, status=201)


def _stage_multipart(staging: Path, settings: Settings) -> tuple[str, Path]:
    """The original form: fields name, params (params.json), labels (labels.txt), model (the model file).

    ``model`` is either a (gzipped) tar of the SavedModel directory or a lone ``saved_model.pb`` whose
    variables are constants.
    """
    name = request.form.get("name", "")
    if not name:
        raise BadInputError("the upload form needs a 'name' field")
    check_name(name)
    bundle_dir = staging / "bundle"
    bundle_dir.mkdir()
    model = request.files.get("model")
    if model is None:
        raise BadInputError("the upload form needs a 'model' file")
    stream = model.stream
    if tarfile.is_tarfile(stream):
        stream.seek(0)
        extract_archive(stream, bundle_dir, settings.max_upload_bytes, settings.max_upload_members)
        bundle_dir = _single_folder(bundle_dir)
    else:
        stream.seek(0)
        model.save(bundle_dir / SAVED_MODEL)
    for field, filename in (("params", "params.json"), ("labels", "labels.txt")):
        if field in request.files:
            request.files[field].save(bundle_dir / filename)
        elif field in request.form:
            (bundle_dir / filename).write_text(request.form[field])
    return name, bundle_dir


def _stage_tar(staging: Path, settings: Settings, name: str | None) -> tuple[str, Path]:
    """The original bundle upload: a tar whose top-level folder is the model name."""
    extracted = staging / "extracted"
    extract_archive(request.stream, extracted, settings.max_upload_bytes, settings.max_upload_members)
    top = [entry for entry in extracted.iterdir()]
    if (extracted / SAVED_MODEL).is_file():
        if not name:
            raise BadInputError("the archive has no top-level folder: name the model with ?name=<model>")
        return check_name(name), extracted
    if len(top) != 1 or not top[0].is_dir():
        raise BadInputError("the archive must hold one top-level folder named after the model")
    if name and name != top[0].name:
        raise BadInputError(f"the archive's folder {top[0].name!r} does not match the model name {name!r}")
    return check_name(top[0].name), top[0]


def _single_folder(path: Path) -> Path:
    """The SavedModel directory inside an extracted archive: the root, or its only folder."""
    if (path / SAVED_MODEL).is_file():
        return path
    entries = list(path.iterdir())
    if len(entries) == 1 and (entries[0] / SAVED_MODEL).is_file():
        return entries[0]
    raise BadInputError(f"the model archive holds no {SAVED_MODEL}")


def _check_bundle(name: str, bundle_dir: Path) -> None:
    """Refuse an upload that could not be served: nothing reaches the repository unless this passes."""
    if not (bundle_dir / SAVED_MODEL).is_file():
        raise BadInputError(f"the bundle has no {SAVED_MODEL}")
    if not (bundle_dir / "params.json").is_file():
        raise BadInputError("the bundle has no params.json")
    bundle = read_bundle(name, 0, bundle_dir)
    declared = bundle.params.get("name")
    if declared not in (None, name):
        raise BadInputError(f"params.json names the model {declared!r}, but the upload is {name!r}")
    model = load_model(bundle, numpy_engine=False)
    if model.bundle.params.get("features"):
        _ = model.features  # raises if the spec is malformed or does not fit the SavedModel


# -- TF Serving REST -------------------------------------------------------------------------------------


def _tf_serving_api(bp: Blueprint, store: ModelStore, settings: Settings) -> None:
    @bp.post("/v1/models/<name>:predict")
    @bp.post("/v1/models/<name>/versions/<version>:predict")
    def tf_predict(name: str, version: str | None = None) -> Response:
        body = json_body()
        signature = body.get("signature_name")
        store.enter()
        try:
            model = store.get(name, _version(version))
            if signature not in (None, model.bundle.params.get("signature") or "serving_default"):
                raise BadInputError(f"model {name!r} has no signature {signature!r}")
            if ("instances" in body) == ("inputs" in body):
                raise BadInputError('send exactly one of "instances" (rows) or "inputs" (columns)')
            if "instances" in body:
                matrix = _tf_instances(model, body["instances"], settings.max_batch_rows)
                return _json({"predictions": np.ascontiguousarray(model.predict(matrix))})
            matrix = _tf_inputs(model, body["inputs"], settings.max_batch_rows)
            return _json({"outputs": np.ascontiguousarray(model.predict(matrix))})
        finally:
            store.leave()

    @bp.get("/v1/models/<name>")
    @bp.get("/v1/models/<name>/versions/<version>")
    def tf_status(name: str, version: str | None = None) -> Response:
        wanted = _version(version)
        store.bundle(name, wanted)
        versions = store.snapshot().get(name, {})
        shown = [wanted] if wanted else sorted(versions, reverse=True)
        return _json(
            {
                "model_version_status": [
                    {
                        "version": str(v),
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                    for v in shown
                ]
            }
        )

    @bp.get("/v1/models/<name>/metadata")
    @bp.get("/v1/models/<name>/versions/<version>/metadata")
    def tf_metadata(name: str, version: str | None = None) -> Response:
        model = store.get(name, _version(version))
        signature = model.bundle.params.get("signature") or "serving_default"
        tensor = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}]}}
        return _json(
            {
                "model_spec": {"name": name, "version": str(model.bundle.version), "signature_name": ""},
                "metadata": {
                    "signature_def": {
                        "signature_def": {
                            signature: {
                                "inputs": {
                                    model.input_name: _tf_tensor_info(
                                        model.input_name, [-1, model.dim], tensor
                                    )
                                },
                                "outputs": {
                                    model.output_name: _tf_tensor_info(
                                        model.output_name, [-1, model.n_outputs or -1], tensor
                                    )
                                },
                                "method_name": "tensorflow/serving/predict",
                            }
                        }
                    }
                },
            }
        )


def _tf_tensor_info(name: str, shape: list[int], template: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dtype": template["dtype"],
        "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape], "unknown_rank": False},
        "name": f"{name}:0",
    }


def _tf_instances(model: LoadedModel, instances: Any, max_rows: int) -> np.ndarray:
    if not isinstance(instances, list) or not instances:
        raise BadInputError("instances must be a non-empty list")
    if all(isinstance(i, dict) for i in instances):
        if all(set(i) == {model.input_name} for i in instances):
            return to_matrix([i[model.input_name] for i in instances], model.dim, max_rows, "instances")[0]
        return _raw_matrix(model, _events_to_columns(instances), max_rows)
    matrix, single = to_matrix(instances, model.dim, max_rows, "instances")
    if single:
        raise BadInputError(f"instances must be a list of rows of {model.dim} numbers")
    return matrix


def _tf_inputs(model: LoadedModel, inputs: Any, max_rows: int) -> np.ndarray:
    if isinstance(inputs, dict):
        if set(inputs) == {model.input_name}:
            return to_matrix(inputs[model.input_name], model.dim, max_rows, "inputs")[0]
        return _raw_matrix(model, inputs, max_rows)
    return to_matrix(inputs, model.dim, max_rows, "inputs")[0]


# -- KServe v2 / Open Inference Protocol -----------------------------------------------------------------


def _kserve_api(bp: Blueprint, store: ModelStore, settings: Settings) -> None:
    @bp.get("/v2")
    def server_metadata() -> Response:
        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    @bp.get("/v2/health/live")
    def live() -> Response:
        return _json({"live": True})

    @bp.get("/v2/health/ready")
    def ready() -> Response:
        """Ready once this worker has loaded the models that were there at its start."""
        is_ready = store.ready.is_set()
        return _json({"ready": is_ready}, status=200 if is_ready else 503)

    @bp.get("/v2/models/<name>")
    @bp.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        model = store.get(name, _version(version))
        return _json(
            {
                "name": name,
                "versions": [str(v) for v in sorted(store.snapshot().get(name, {}))],
                "platform": "tensorflow_savedmodel",
                "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, model.dim]}],
                "outputs": [
                    {"name": model.output_name, "datatype": "FP32", "shape": [-1, model.n_outputs or -1]}
                ],
            }
        )

    @bp.get("/v2/models/<name>/ready")
    @bp.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        model = store.get(name, _version(version))
        return _json({"name": name, "version": str(model.bundle.version), "ready": True})

    @bp.post("/v2/models/<name>/infer")
    @bp.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> Response:
        body, binary = _kserve_body()
        store.enter()
        try:
            model = store.get(name, _version(version))
            matrix = _kserve_inputs(model, body.get("inputs"), settings.max_batch_rows, binary)
            binary_output = _wants_binary(body, model.output_name, name)
            result = np.ascontiguousarray(model.predict(matrix), dtype="<f4")
        finally:
            store.leave()
        output: dict[str, Any] = {"name": model.output_name, "datatype": "FP32", "shape": list(result.shape)}
        response: dict[str, Any] = {"model_name": name, "model_version": str(model.bundle.version)}
        if "id" in body:
            response["id"] = body["id"]
        if not binary_output:
            return _json({**response, "outputs": [{**output, "data": result.ravel()}]})
        data = result.tobytes()
        output["parameters"] = {"binary_data_size": len(data)}
        header = _dumps({**response, "outputs": [output]})
        answer = Response(header + data, mimetype="application/octet-stream")
        answer.headers[BINARY_HEADER] = str(len(header))
        return answer


def _kserve_body() -> tuple[dict[str, Any], memoryview | None]:
    """The JSON inference request, and the tensors' bytes when the binary data extension is used."""
    header_length = request.headers.get(BINARY_HEADER)
    if header_length is None:
        return json_body(), None
    if request.mimetype not in JSON_TYPES and request.mimetype != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            f"unsupported content type {request.mimetype!r}: send application/octet-stream"
        )
    raw = request.get_data(cache=False)
    try:
        length = int(header_length)
        if not 0 < length <= len(raw):
            raise ValueError(header_length)
        body = orjson.loads(raw[:length])
    except ValueError as err:
        raise BadInputError(f"bad {BINARY_HEADER} or inference header: {err}") from None
    if not isinstance(body, dict):
        raise BadInputError("the inference header must be a JSON object")
    return body, memoryview(raw)[length:]


def _wants_binary(body: Mapping[str, Any], output_name: str, name: str) -> bool:
    """Binary output is asked for per output (``binary_data``) or for all (``binary_data_output``)."""
    parameters = body.get("parameters")
    binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    for wanted in body.get("outputs") or []:
        if not isinstance(wanted, dict) or wanted.get("name") != output_name:
            raise BadInputError(f"model {name!r} has one output, {output_name!r}")
        wanted_parameters = wanted.get("parameters")
        if isinstance(wanted_parameters, dict) and "binary_data" in wanted_parameters:
            binary = wanted_parameters["binary_data"] is True
    return binary


def _kserve_inputs(
    model: LoadedModel, inputs: Any, max_rows: int, binary: memoryview | None = None
) -> np.ndarray:
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise BadInputError("inputs must be a non-empty list of tensors {name, shape, datatype, data}")
    tensors = {}
    offset = 0
    for tensor in inputs:
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str):
            raise BadInputError("every input tensor needs a name")
        if datatype not in KSERVE_NUMERIC:
            raise BadInputError(f"input {name!r}: datatype must be numeric (FP32, ...), got {datatype!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise BadInputError(f"input {name!r}: shape must be a list of sizes")
        parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        if "binary_data_size" in parameters:
            array, offset = _binary_tensor(
                name, shape, datatype, parameters["binary_data_size"], binary, offset
            )
            tensors[name] = array
            continue
        values = tensor.get("data")
        if not isinstance(values, list):
            raise BadInputError(f"input {name!r}: data must be a list of numbers")
        try:
            array = np.asarray(values)
        except ValueError:
            raise BadInputError(f"input {name!r}: data is ragged") from None
        if array.dtype.kind not in "fiu" or array.size != int(np.prod(shape)):
            raise BadInputError(
                f"input {name!r}: data must hold {int(np.prod(shape))} numbers for shape {shape}"
            )
        tensors[name] = array.reshape(shape)
    if binary is not None and offset != len(binary):
        raise BadInputError(f"the request carries {len(binary) - offset} bytes that no input claims")
    if model.input_name in tensors or (len(tensors) == 1 and model.features is None):
        (array,) = [tensors[model.input_name]] if model.input_name in tensors else tensors.values()
        if array.ndim != 2:
            raise BadInputError(f"input {model.input_name!r} must have shape [rows, {model.dim}]")
        return to_matrix(array, model.dim, max_rows, f"input {model.input_name!r}")[0]
    for name, array in tensors.items():
        if array.ndim != 1:
            raise BadInputError(f"raw branch {name!r} must have shape [events] (lists need the JSON APIs)")
    return _raw_matrix(model, tensors, max_rows)


def _binary_tensor(
    name: str, shape: list[int], datatype: str, size: Any, binary: memoryview | None, offset: int
) -> tuple[np.ndarray, int]:
    """One input of the binary data extension: little-endian values, in the inputs' order."""
    if binary is None:
        raise BadInputError(f"input {name!r} declares binary data but the request has no {BINARY_HEADER}")
    dtype = np.dtype(KSERVE_DTYPES[datatype])
    expected = int(np.prod(shape)) * dtype.itemsize
    if not isinstance(size, int) or size != expected or offset + size > len(binary):
        raise BadInputError(
            f"input {name!r}: binary_data_size must be {expected} bytes for {datatype} {shape}, "
            f"and present in the body"
        )
    return np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape), offset + size


# -- service endpoints: status, metrics, OpenAPI -----------------------------------------------------------


def _service_api(bp: Blueprint, store: ModelStore, settings: Settings, metrics: Metrics) -> None:
    started = time.time()

    @bp.get("/status")
    def status() -> Response:
        import psutil

        memory = psutil.virtual_memory()
        return _json(
            {
                "status": "ok",
                "server": SERVER_NAME,
                "version": SERVER_VERSION,
                "hostname": socket.gethostname(),
                "python": platform.python_version(),
                "pid": os.getpid(),
                "uptime_s": round(time.time() - started, 3),
                "models": len(store.snapshot()),
                "loaded_in_worker": [f"{n}/{v}" for n, v in sorted(store.loaded())],
                "cpu_count": os.cpu_count(),
                "load_average": list(os.getloadavg()),
                "memory": {"total": memory.total, "available": memory.available, "percent": memory.percent},
                "process_rss": psutil.Process().memory_info().rss,
            }
        )

    @bp.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return _json(openapi_document(settings.base))


# -- errors and request metrics --------------------------------------------------------------------------


def _install_metrics_and_errors(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_clock() -> None:
        g.tfaas_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = (request.endpoint or "unknown").removeprefix("tfaas.")
        elapsed = time.perf_counter() - g.get("tfaas_started", time.perf_counter())
        metrics.observe(endpoint, request.method, response.status_code, elapsed)
        return response

    install_error_handlers(app, extra=[(ModelNotFoundError, 404)])
