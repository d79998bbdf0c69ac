"""The data plane every protocol of TFaaS goes through, as KServe's Python server has its ``DataPlane``.

It finds a model by name and version, turns what a client sent into the model's float32 matrix (normalised
values, or raw branch values through the bundle's own ``FeatureSpec``), runs the model, and counts the
requests in flight for the batcher. The protocols (``tfaas.protocols``) only parse their payloads and word
their answers; every check of numbers and shapes is here, so the protocols agree on what is bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from servicecore.errors import BadInputError
from tfaas.batching import InFlight
from tfaas.predictor import LoadedModel, ModelStore
from tfaas.repository import Bundle, Snapshot


def parse_version(value: Any) -> int | None:
    """A version as sent in a path, query, form or body: None for "the latest", else a positive integer."""
    if value in (None, ""):
        return None
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise BadInputError(f"version must be a positive integer, got {value!r}") from None
    if version < 1 or (isinstance(value, float) and value != version) or isinstance(value, bool):
        raise BadInputError(f"version must be a positive integer, got {value!r}")
    return version


def to_matrix(values: Any, dim: int, max_rows: int, what: str = "values") -> tuple[np.ndarray, bool]:
    """Validate numbers sent by a client: one row or a list of rows of ``dim`` finite numbers.

    Returns the float32 matrix and whether a single row (not a batch) was sent.
    """
    if isinstance(values, np.ndarray):
        array = values
    else:
        if not isinstance(values, list):
            raise BadInputError(f"{what} must be a list of numbers or a list of rows")
        try:
            array = np.array(values)
        except ValueError:
            raise BadInputError(f"{what}: every row must have {dim} numbers") from None
    if array.size == 0:
        raise BadInputError(f"{what} is empty: send at least one row of {dim} numbers")
    if array.dtype.kind not in "fiu":
        raise BadInputError(f"{what} must hold only numbers")
    single = array.ndim == 1
    if single:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise BadInputError(f"{what} must be one row or a list of rows, got {array.ndim} dimensions")
    if array.shape[1] != dim:
        raise BadInputError(f"{what}: the model expects {dim} features per row, got {array.shape[1]}")
    if array.shape[0] > max_rows:
        raise BadInputError(f"{what}: at most {max_rows} rows per request, got {array.shape[0]}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        matrix = np.asarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise BadInputError(f"{what} must be finite numbers (no NaN or infinity, within float32 range)")
    return matrix, single


def raw_matrix(model: LoadedModel, columns: Mapping[str, Any], max_rows: int) -> np.ndarray:
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


def events_to_columns(events: Any) -> dict[str, Any]:
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


class DataPlane:
    """Model lookup, input conversion and prediction for every protocol of one worker.

    A predict request runs inside ``with plane.in_flight:``, from the model lookup to the model call, so
    that the batcher knows how many requests of the worker are on their way.
    """

    def __init__(self, store: ModelStore, max_rows: int) -> None:
        self.store = store
        self.max_rows = max_rows
        self.in_flight: InFlight = store.in_flight

    # -- models --

    def model(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model (NotFoundError for an unknown name or version); None is the latest version."""
        return self.store.get(name, version)

    def bundle(self, name: str, version: int | None = None) -> Bundle:
        """The bundle on disk, without loading it."""
        return self.store.bundle(name, version)

    def models(self) -> Snapshot:
        return self.store.snapshot()

    def versions(self, name: str) -> list[int]:
        return sorted(self.store.snapshot().get(name, {}))

    def is_ready(self) -> bool:
        """Whether this worker has loaded the models that were there at its start."""
        return self.store.ready.is_set()

    # -- inputs --

    def values(self, model: LoadedModel, values: Any, what: str = "values") -> tuple[np.ndarray, bool]:
        """Normalised numbers: one row or a list of rows (or an array); the matrix and whether one row."""
        return to_matrix(values, model.dim, self.max_rows, what)

    def raw(self, model: LoadedModel, columns: Mapping[str, Any]) -> np.ndarray:
        """Raw branch values by name (columns), through the bundle's FeatureSpec."""
        return raw_matrix(model, columns, self.max_rows)

    def events(self, model: LoadedModel, events: Any) -> np.ndarray:
        """Raw branch values as one object per event, through the bundle's FeatureSpec."""
        return raw_matrix(model, events_to_columns(events), self.max_rows)

    # -- prediction --

    @staticmethod
    def predict(model: LoadedModel, matrix: np.ndarray) -> np.ndarray:
        """The model's outputs for a checked matrix, C-contiguous for the JSON writer."""
        return np.ascontiguousarray(model.predict(matrix))
