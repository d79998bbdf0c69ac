"""What each event is trained towards besides its features: its weight and its regression targets.

A weight is params.json's ``weight`` expression (``genWeight``, ``genWeight * puWeight`` ...) evaluated on a
chunk, one number per event, times the file's normalisation: ``file_weight[i]`` and, with ``cross_section``,
``cross_section[i] * luminosity / S_i``, where ``S_i`` is the sum of the expression over every event read from
file ``i`` *before* the cuts (pass 1 computes it). Negative generator weights count in that sum with their
sign; the loss then applies ``negative_weights``: ``refuse`` (the job fails, naming the file and the count),
``abs`` or ``zero``. Targets are flat numeric branches, one float32 column each. Everything is vectorised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from appliance.data.workflow import Workflow
from servicecore.errors import BadInputError


def raw_weights(wf: Workflow, columns: Mapping[str, Any], url: str) -> np.ndarray | None:
    """The weight expression on one chunk (signed, before normalisation), or None when unweighted."""
    expression = wf.params.weight_expression
    if expression is None:
        return None
    n = len(next(iter(columns.values()))) if columns else 0
    culprit = f"{url}: weight expression {expression.text!r}"
    try:
        value = expression.evaluate(lambda name: columns[name])
        if isinstance(value, ak.Array):
            value = ak.to_numpy(value)
        values = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{culprit} is not one number per event ({err})") from None
    if values.dtype.kind not in "biuf":
        raise BadInputError(f"{culprit} is not numeric: it gives values of type {values.dtype}")
    values = np.broadcast_to(values.astype(np.float64), (n,)) if values.ndim == 0 else values
    if values.ndim != 1 or len(values) != n:
        raise BadInputError(f"{culprit} is not one number per event (shape {values.shape})")
    finite = np.isfinite(values)
    if not finite.all():
        raise BadInputError(f"{culprit} is NaN or infinite for {int((~finite).sum())} event(s)")
    return values.astype(np.float64)


def file_factors(wf: Workflow, sums_before_cuts: Sequence[float]) -> np.ndarray:
    """Each file's normalisation: file_weight times cross_section * luminosity / sum of weights."""
    p = wf.params
    factors = np.asarray(p.file_weight or [1.0] * len(wf.files), dtype=np.float64)
    if p.cross_section:
        sums = np.asarray(sums_before_cuts, dtype=np.float64)
        if np.any(sums <= 0):
            bad = [wf.files[i] for i in np.flatnonzero(sums <= 0)]
            raise BadInputError(
                f"the weight {p.weight!r} sums to zero or less over {bad[0]!r}; cross_section cannot be "
                "normalised by it"
            )
        factors = factors * np.asarray(p.cross_section, dtype=np.float64) * float(p.luminosity) / sums
    return factors


def loss_weights(wf: Workflow, weights: np.ndarray, url: str) -> np.ndarray:
    """The weights the loss and the weighted metrics use: ``negative_weights`` applied (float32)."""
    negative = weights < 0
    if negative.any():
        policy = wf.params.negative_weights
        if policy == "refuse":
            raise BadInputError(
                f"{url}: {int(negative.sum())} selected event(s) have a negative weight "
                f"({wf.params.weight!r}, e.g. {weights[negative][0]:g}); the loss needs "
                'weights >= 0: set negative_weights to "abs" or "zero", or cut those events'
            )
        weights = np.abs(weights) if policy == "abs" else np.where(negative, 0.0, weights)
    return weights.astype(np.float32)


def target_values(wf: Workflow, columns: Mapping[str, Any], url: str) -> np.ndarray:
    """The regression targets of one chunk, float32 ``[n, len(target)]``."""
    out = []
    for name in wf.params.target:
        try:
            array = columns[name]
            values = np.asarray(ak.to_numpy(array) if isinstance(array, ak.Array) else array)
        except (ValueError, TypeError):
            raise BadInputError(
                f"{url}: regression target {name!r} is jagged (a list per event); a target must be one "
                "number per event"
            ) from None
        if values.ndim != 1 or values.dtype.kind not in "biuf":
            raise BadInputError(f"{url}: regression target {name!r} must be one number per event")
        finite = np.isfinite(values)
        if not finite.all():
            raise BadInputError(
                f"{url}: regression target {name!r} is NaN or infinite for {int((~finite).sum())} event(s)"
            )
        out.append(values.astype(np.float32))
    return np.column_stack(out) if out else np.zeros((0, 0), np.float32)
