"""``POST /upload``: staging an uploaded bundle, checking that it can be served, publishing it.

Nothing reaches the repository unless the bundle loads with its signature and its feature spec fits: the
bundle is staged in ``MODELS/.incoming/`` (same file system) and published with one rename. The model is
loaded and checked in a child process (``tfaas.upload_check``), so the worker's other requests keep their
latency meanwhile.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from flask import request

from servicecore.auth import require_owner
from servicecore.errors import BadInputError, UnsupportedMediaTypeError
from servicecore.naming import check_name
from servicecore.safetar import extract_archive
from tfaas.predictor import LoadedModel, ModelStore
from tfaas.repository import MODEL_FILES, ONNX_MODEL, SAVED_MODEL, read_bundle
from tfaas.settings import Settings
from tfaas.upload_check import CHECK_TIMEOUT_S, check_in_child

TAR_TYPES = frozenset(
    {
        "application/x-tar",
        "application/gzip",
        "application/x-gzip",
        "application/x-gtar",
        "application/x-compressed-tar",
        "application/octet-stream",
    }
)


def stage_upload(store: ModelStore) -> tuple[str, int]:
    """Stage the request's bundle, check it, publish it as the model's next version: (name, version)."""
    settings = store.settings
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
        checked = check_bundle(name, bundle_dir, store)
        _, version = store.repository.publish(bundle_dir, name)
    store.refresh(force=True)
    # The uploader reads its own write: this worker puts the model it checked in place as the new version
    # before answering (others keep serving the old one meanwhile); the other workers swap it in at their
    # next rescan.
    store.install_checked(checked, name, version)
    return name, version


def _stage_multipart(staging: Path, settings: Settings) -> tuple[str, Path]:
    """The original form: fields name, params (params.json), labels (labels.txt), model (the model file).

    ``model`` is either a (gzipped) tar of the bundle directory, a lone ``saved_model.pb`` whose variables
    are constants, or a lone ``model.onnx`` when params.json says ``"runtime": "onnx"``.
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
        lone_model = None
    else:
        stream.seek(0)
        lone_model = staging / "model"
        model.save(lone_model)
    for field, filename in (("params", "params.json"), ("labels", "labels.txt")):
        if field in request.files:
            request.files[field].save(bundle_dir / filename)
        elif field in request.form:
            (bundle_dir / filename).write_text(request.form[field])
    if lone_model is not None:  # its name follows the runtime params.json declares
        runtime = read_bundle(name, 0, bundle_dir).params.get("runtime")
        lone_model.rename(bundle_dir / (ONNX_MODEL if runtime == "onnx" else SAVED_MODEL))
    return name, bundle_dir


def _stage_tar(staging: Path, settings: Settings, name: str | None) -> tuple[str, Path]:
    """The original bundle upload: a tar whose top-level folder is the model name."""
    extracted = staging / "extracted"
    extract_archive(request.stream, extracted, settings.max_upload_bytes, settings.max_upload_members)
    top = [entry for entry in extracted.iterdir()]
    if any((extracted / model_file).is_file() for model_file in MODEL_FILES):
        if not name:
            raise BadInputError("the archive has no top-level folder: name the model with ?name=<model>")
        return check_name(name), extracted
    if len(top) != 1 or not top[0].is_dir():
        raise BadInputError("the archive must hold one top-level folder named after the model")
    if name and name != top[0].name:
        raise BadInputError(f"the archive's folder {top[0].name!r} does not match the model name {name!r}")
    return check_name(top[0].name), top[0]


def _single_folder(path: Path) -> Path:
    """The bundle directory inside an extracted archive: the root, or its only folder."""
    if _has_model_file(path):
        return path
    entries = list(path.iterdir())
    if len(entries) == 1 and _has_model_file(entries[0]):
        return entries[0]
    raise BadInputError(f"the model archive holds no {SAVED_MODEL} or {ONNX_MODEL}")


def _has_model_file(path: Path) -> bool:
    return any((path / model_file).is_file() for model_file in MODEL_FILES)


def check_bundle(name: str, bundle_dir: Path, store: ModelStore) -> LoadedModel:
    """Refuse an upload that could not be served: nothing reaches the repository unless this passes.

    The model is loaded and warmed up as the store would serve it, in a child process, and returned without
    its TensorFlow parts (``tfaas.upload_check``).
    """
    if not (bundle_dir / "params.json").is_file():
        raise BadInputError("the bundle has no params.json")
    bundle = read_bundle(name, 0, bundle_dir)
    model_file = ONNX_MODEL if bundle.params.get("runtime") == "onnx" else SAVED_MODEL
    if not (bundle_dir / model_file).is_file():
        runtime = "an ONNX" if model_file == ONNX_MODEL else 'a SavedModel (or "runtime": "onnx")'
        raise BadInputError(f"the bundle has no {model_file}: params.json declares {runtime} bundle")
    declared = bundle.params.get("name")
    if declared not in (None, name):
        raise BadInputError(f"params.json names the model {declared!r}, but the upload is {name!r}")
    if bundle.params.get("servable") is False:
        reason = bundle.params.get("unservable_reason") or "no reason recorded"
        raise BadInputError(f"model {name!r} is marked not servable, so it is not accepted: {reason}")
    settings = store.settings
    return check_in_child(bundle, settings.numpy_engine, settings.tf_threads, CHECK_TIMEOUT_S)
