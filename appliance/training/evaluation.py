"""Test metrics of a trained classifier: ROC curves and AUC, with scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np

ROC_POINTS = 200


def roc_metrics(
    y: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """ROC AUC (binary, or one-vs-rest macro average for more classes) and the curves, with scikit-learn."""
    from sklearn.metrics import roc_auc_score, roc_curve

    n_classes = probabilities.shape[1]
    present = np.unique(y)
    if len(present) < 2:
        return {"auc": None, "auc_note": "the test part holds a single class"}, None
    curves: dict[str, Any] = {}
    per_class: dict[str, float | None] = {}
    targets = [n_classes - 1] if n_classes == 2 else range(n_classes)
    for k in targets:
        positive = y == k
        if not positive.any() or positive.all():
            per_class[class_names[k]] = None
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, k])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), ROC_POINTS)).astype(int))
        area = float(roc_auc_score(positive, probabilities[:, k]))
        per_class[class_names[k]] = area
        curves[class_names[k]] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "auc": area}
    if n_classes == 2:
        return {"auc": per_class[class_names[1]]}, curves
    try:
        macro = float(
            roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=list(range(n_classes)))
        )
    except ValueError:
        macro = None  # a class is missing from the test part
    return {"auc": macro, "auc_per_class": per_class}, curves
