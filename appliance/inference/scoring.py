"""The work of one task, run on a Dask worker: check a file, or score one entry range of it.

Tasks get plain values (URLs, the bundle, entry numbers) and return NumPy arrays, so they run the same on a
local cluster and on a remote scheduler's workers. The bundle is its path on a local cluster; for a remote
scheduler's workers, which cannot read the job's files, it is a :class:`ShippedBundle` (the bundle's bytes,
scattered once to every worker), unpacked once per worker process into a private temporary directory.
The files' URLs are read by the workers themselves (``root://`` through the XRootD proxy).
Each worker process loads a bundle's model once and keeps it (its threads share it): a TensorFlow SavedModel,
or the ``model.onnx`` of a PyTorch, scikit-learn or XGBoost bundle, run with onnxruntime as TFaaS runs it.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.data.sources import column_kinds, column_type, iterate, open_tree
from appliance.data.specs import passing_events
from appliance.inference.bundle import ONNX_MODEL, ModelBundle, load_bundle
from servicecore.errors import BadInputError


@dataclass(frozen=True)
class FileCheck:
    """What a file holds for this model: its entries, and the columns it lacks or holds in the wrong form."""

    url: str
    entries: int
    missing: tuple[str, ...]
    wrong: tuple[str, ...]  # "name (type)" of columns present but not of the kind the model needs


@dataclass(frozen=True)
class ScoredRange:
    """Entries ``start``..``start+len`` of one file: whether each passed the cuts, and the model's outputs
    (NaN where it did not)."""

    start: int
    passed: np.ndarray  # bool [n]
    scores: np.ndarray  # float32 [n, n_outputs]


@dataclass(frozen=True)
class ShippedBundle:
    """A bundle's regular files as bytes (relative path, content), named by their digest."""

    digest: str
    files: tuple[tuple[str, bytes], ...]


MAX_SHIPPED_BYTES = 2 << 30  # a bundle is sent whole to each worker: beyond this, a shared file system


def ship_bundle(path: str | Path) -> ShippedBundle:
    """Read a bundle directory's regular files (links are not followed: a staged bundle has none)."""
    root = Path(path)
    files, total, digest = [], 0, hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = file.relative_to(root).as_posix()
        data = file.read_bytes()
        total += len(data)
        if total > MAX_SHIPPED_BYTES:
            raise BadInputError(
                f"bundle {root} is over {MAX_SHIPPED_BYTES >> 20} MiB: too large to send to Dask workers"
            )
        digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
        files.append((relative, data))
    return ShippedBundle(digest.hexdigest(), tuple(files))


_UNPACKED: dict[str, str] = {}


def _unpack(shipped: ShippedBundle) -> str:
    """The shipped bundle as a directory of this process's own (mkdtemp: 0700, removed at exit), once per
    digest."""
    if shipped.digest in _UNPACKED:
        return _UNPACKED[shipped.digest]
    root = Path(tempfile.mkdtemp(prefix="mlaas4hep-bundle-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for relative, data in shipped.files:
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise BadInputError(f"a shipped bundle names {relative!r}, not a path inside the bundle")
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:  # noqa: PTH123 - x: never over a file already there
            out.write(data)
    _UNPACKED[shipped.digest] = str(root)
    return str(root)


BundleRef = str | ShippedBundle  # a path the worker reads, or the bundle itself


@dataclass
class LoadedModel:
    bundle: ModelBundle
    run: Any  # float32 [n, dim] -> float32 [n, n_outputs]
    n_outputs: int
    saved_model: Any  # kept alive: the signature refers to it (an onnxruntime session for ONNX)


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> LoadedModel:
    bundle = load_bundle(path)
    if bundle.runtime == ONNX_MODEL:
        return _load_onnx(bundle)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
    except Exception as err:  # TensorFlow raises many types for a corrupt or foreign SavedModel
        raise BadInputError(f"model {bundle.name!r} is not a loadable SavedModel: {err}") from None
    signature_name = str(bundle.params.get("signature") or "serving_default")
    if signature_name not in loaded.signatures:
        raise BadInputError(f"model {bundle.name!r} has no signature {signature_name!r}")
    signature = loaded.signatures[signature_name]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    input_name = _pick(bundle.params, ("input_name", "inputNode"), inputs)
    output_name = _pick(bundle.params, ("output_name", "outputNode"), outputs)
    _check_dim(bundle, inputs[input_name].shape[-1], "SavedModel")
    shape = outputs[output_name].shape
    n_outputs = int(shape[-1]) if shape.rank == 2 and shape[-1] is not None else 1

    def run(matrix: np.ndarray) -> np.ndarray:
        result = signature(**{input_name: tf.constant(matrix, dtype=tf.float32)})[output_name]
        return np.asarray(result.numpy(), dtype=np.float32).reshape(len(matrix), -1)

    return LoadedModel(bundle, run, n_outputs, loaded)


def _load_onnx(bundle: ModelBundle) -> LoadedModel:
    """A PyTorch, scikit-learn or XGBoost bundle's ``model.onnx``, run with onnxruntime as TFaaS runs it
    (one intra-op thread: the Dask workers are the parallelism)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(bundle.path / ONNX_MODEL), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own types for a corrupt or foreign file
        raise BadInputError(f"model {bundle.name!r} is not a loadable ONNX model: {err}") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    input_name = _pick(bundle.params, ("input_name", "inputNode"), inputs)
    output_name = _pick(bundle.params, ("output_name", "outputNode"), outputs)
    shape = inputs[input_name].shape
    _check_dim(bundle, shape[-1] if len(shape) == 2 else None, "ONNX model")

    def run(matrix: np.ndarray) -> np.ndarray:
        feed = {input_name: np.ascontiguousarray(matrix, dtype=np.float32)}
        result = session.run([output_name], feed)[0]
        return np.asarray(result, dtype=np.float32).reshape(len(matrix), -1)

    # The output's width may be dynamic in the graph: one row of zeros says it.
    n_outputs = run(np.zeros((1, bundle.spec.dim), dtype=np.float32)).shape[1]
    return LoadedModel(bundle, run, n_outputs, session)


def _check_dim(bundle: ModelBundle, dim: Any, what: str) -> None:
    if dim != bundle.spec.dim:
        raise BadInputError(
            f"model {bundle.name!r}: its feature spec gives {bundle.spec.dim} columns but the {what} "
            f"takes {dim}"
        )


def _pick(params: dict[str, Any], keys: tuple[str, ...], available: dict[str, Any]) -> str:
    for key in keys:
        if params.get(key) in available:
            return str(params[key])
    return next(iter(available))


_LOADING = threading.Lock()


def loaded_model(bundle: BundleRef | Path) -> LoadedModel:
    """The bundle's model, loaded once per process (reloaded if its params.json changes)."""
    with _LOADING:  # worker threads of one process share the loaded model rather than each load it
        path = _unpack(bundle) if isinstance(bundle, ShippedBundle) else str(bundle)
        return _load(path, (Path(path) / "params.json").stat().st_mtime_ns)


def model_outputs(bundle: BundleRef) -> int:
    """The number of model outputs (and, as a side effect, the model loaded on this worker)."""
    return loaded_model(bundle).n_outputs


def check_file(url: str, tree_name: str, needed: dict[str, str | None]) -> FileCheck:
    """Open ``url`` and compare its columns with those the model needs (a bad file raises BadInputError)."""
    tree = open_tree(url, tree_name)
    kinds = column_kinds(tree)
    missing = tuple(name for name in needed if name not in kinds)
    wrong = tuple(
        f"{name} ({column_type(tree, name)})"
        for name, kind in needed.items()
        if name in kinds and (kinds[name] is None or (kind is not None and kinds[name] != kind))
    )
    return FileCheck(url, int(tree.num_entries), missing, wrong)


def score_range(bundle: BundleRef, url: str, tree_name: str, start: int, stop: int, step: int) -> ScoredRange:
    """Read entries [start, stop) of ``url`` chunk by chunk, apply the cuts and the model."""
    model = loaded_model(bundle)
    bundle = model.bundle
    spec, cuts = bundle.spec, bundle.cuts
    branches = list(bundle.needed_branches())
    tree = open_tree(url, tree_name)
    passed_parts, score_parts = [], []
    for _, arrays in iterate(tree, branches, step, start, stop, url):
        columns, keep = passing_events(cuts, spec, arrays)
        n = len(next(iter(columns.values())))
        scores = np.full((n, model.n_outputs), np.nan, dtype=np.float32)
        keep = np.ones(n, dtype=bool) if keep is None else keep
        if keep.any():
            # Every event is transformed and the passing rows taken after: uproot's arrays keep their
            # contiguous list offsets (the transform's fast path), which selecting events first would lose.
            try:
                matrix = spec.transform(columns)
            except BadInputError as err:
                raise BadInputError(f"{url}: {err}") from None
            scores[keep] = model.run(matrix if keep.all() else matrix[keep])
        passed_parts.append(keep)
        score_parts.append(scores)
    if not passed_parts:
        return ScoredRange(start, np.zeros(0, bool), np.zeros((0, model.n_outputs), np.float32))
    return ScoredRange(start, np.concatenate(passed_parts), np.concatenate(score_parts))
