"""Test metrics of a trained model, with scikit-learn: ROC curves and AUC of a classifier, unweighted and
weighted by the events' weights, and RMSE and residuals of a regression."""

from __future__ import annotations

from typing import Any

import numpy as np

ROC_POINTS = 200
RESIDUAL_POINTS = 2000  # events drawn in the residual plot: enough to see the shape, small in metrics.json


def _roc_curve(positive: np.ndarray, score: np.ndarray, weights: np.ndarray | None) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(positive, score, sample_weight=weights)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).astype(int))
    area = float(roc_auc_score(positive, score, sample_weight=weights))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "auc": area}


def roc_metrics(
    y: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    weights: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """ROC AUC (binary, or one-vs-rest macro average for more classes) and the curves, with scikit-learn.

    The curves come as ``{"unweighted": {class: curve}, "weighted": {class: curve} | None}``. With event
    ``weights`` everything is computed again with them (``auc_weighted``); a class whose events all weigh 0
    has no weighted curve."""
    n_classes = probabilities.shape[1]
    present = np.unique(y)
    if len(present) < 2:
        return {"auc": None, "auc_note": "the test part holds a single class"}, None
    curves: dict[str, Any] = {}
    weighted_curves: dict[str, Any] = {}
    per_class: dict[str, float | None] = {}
    weighted_per_class: dict[str, float | None] = {}
    targets = [n_classes - 1] if n_classes == 2 else range(n_classes)
    for k in targets:
        name = class_names[k]
        positive = y == k
        if not positive.any() or positive.all():
            per_class[name] = weighted_per_class[name] = None
            continue
        curves[name] = _roc_curve(positive, probabilities[:, k], None)
        per_class[name] = curves[name]["auc"]
        weighted_per_class[name] = None
        if weights is not None and weights[positive].sum() > 0 and weights[~positive].sum() > 0:
            weighted_curves[name] = _roc_curve(positive, probabilities[:, k], weights)
            weighted_per_class[name] = weighted_curves[name]["auc"]
    roc = {"unweighted": curves, "weighted": weighted_curves or None}
    if n_classes == 2:
        metrics: dict[str, Any] = {"auc": per_class[class_names[1]]}
        if weights is not None:
            metrics["auc_weighted"] = weighted_per_class[class_names[1]]
        return metrics, roc
    metrics = {"auc": _macro_auc(y, probabilities, None), "auc_per_class": per_class}
    if weights is not None:
        metrics["auc_weighted"] = _macro_auc(y, probabilities, weights)
        metrics["auc_weighted_per_class"] = weighted_per_class
    return metrics, roc


def _macro_auc(y: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None) -> float | None:
    from sklearn.metrics import roc_auc_score

    try:
        return float(
            roc_auc_score(
                y,
                probabilities,
                multi_class="ovr",
                average="macro",
                labels=list(range(probabilities.shape[1])),
                sample_weight=weights,
            )
        )
    except ValueError:
        return None  # a class is missing from the test part


def weighted_accuracy(y: np.ndarray, probabilities: np.ndarray, weights: np.ndarray) -> float | None:
    total = float(weights.sum())
    right = np.argmax(probabilities, axis=1) == y
    return float(weights[right].sum() / total) if total > 0 else None


def regression_metrics(
    targets: np.ndarray,
    predictions: np.ndarray,
    names: list[str],
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """RMSE, mean absolute error and mean residual per target (weighted too with ``weights``), and a seeded
    sample of (target, residual) pairs per target for the residual plot."""
    residuals = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    per_target: dict[str, Any] = {}
    for k, name in enumerate(names):
        r = residuals[:, k]
        entry: dict[str, Any] = {
            "rmse": float(np.sqrt(np.mean(r**2))),
            "mae": float(np.mean(np.abs(r))),
            "mean_residual": float(np.mean(r)),
            "target_std": float(np.std(targets[:, k])),
        }
        if weights is not None and weights.sum() > 0:
            entry["rmse_weighted"] = float(np.sqrt(np.average(r**2, weights=weights)))
            entry["mean_residual_weighted"] = float(np.average(r, weights=weights))
        per_target[name] = entry
    metrics: dict[str, Any] = {
        "rmse": float(np.sqrt(np.mean(residuals**2))),
        "rmse_per_target": per_target,
    }
    if weights is not None and weights.sum() > 0:
        metrics["rmse_weighted"] = float(np.sqrt(np.average(np.mean(residuals**2, axis=1), weights=weights)))
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.permutation(len(residuals))[:RESIDUAL_POINTS])
    plot = {
        name: {"target": targets[shown, k].tolist(), "residual": residuals[shown, k].tolist()}
        for k, name in enumerate(names)
    }
    return metrics, plot
