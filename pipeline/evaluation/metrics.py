"""Classification metrics of one model on one labelled set.

Everything works on plain arrays (labels, class probabilities), so the same functions score a
network, a linear probe or a stored prediction file. Numbers are rounded to :data:`DIGITS` places
once, here, so metrics.json and the HTML report show the very same figures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

__all__ = ["DIGITS", "rnd", "confusion_matrix", "per_class_scores", "expected_calibration_error",
           "classification_metrics"]

DIGITS = 4


def rnd(value: float | None) -> float | None:
    """Round a figure for metrics.json and the report (None and NaN stay None)."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), DIGITS)


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> None:
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-d and the same length, got {y_true.shape} "
                         f"and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no samples to score")
    for name, arr in (("label", y_true), ("prediction", y_pred)):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} index out of range 0..{num_classes - 1}: found {arr.min()}..{arr.max()}")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Count matrix (scikit-learn's): rows are true classes, columns predicted classes.

    Args:
        y_true: true label indices.
        y_pred: predicted label indices.
        num_classes: number of classes (classes never seen still get a row and a column).
    Returns:
        An int array of shape (num_classes, num_classes).
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    _check_labels(y_true, y_pred, num_classes)
    return sk_metrics.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def per_class_scores(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (scikit-learn's, ``zero_division=0``).

    A class never predicted has precision 0, a class absent from the labels recall 0, so a collapsed
    model cannot look good.

    Args:
        y_true: true label indices.
        y_pred: predicted label indices.
        num_classes: number of classes.
    Returns:
        Arrays ``precision``, ``recall``, ``f1``, ``support``, each of length num_classes.
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    _check_labels(y_true, y_pred, num_classes)
    scores = sk_metrics.precision_recall_fscore_support(y_true, y_pred, labels=np.arange(num_classes),
                                                        zero_division=0)
    return dict(zip(("precision", "recall", "f1", "support"), scores))


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, with equal-width bins.

    Args:
        probs: (n, num_classes) class probabilities, rows summing to 1.
        y_true: true label indices.
        bins: number of confidence bins on [0, 1].
    Returns:
        Sum over bins of (bin share) x |accuracy - mean confidence| in the bin.
    """
    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true, dtype=int)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must be (n, classes) with n = {len(y_true)} labels, got {probs.shape}")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs rows must sum to 1 (pass softmax outputs, not logits)")
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    # bin i holds (i/bins, (i+1)/bins]; confidence 0 cannot happen for a top class of >= 1 class
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, y_true: Sequence[int], classes: Sequence[str],
                           ece_bins: int = 15) -> dict:
    """All the scores of one model on one labelled set.

    Args:
        probs: (n, num_classes) class probabilities.
        y_true: true label indices.
        classes: class names in label-index order.
        ece_bins: bins for the calibration error.
    Returns:
        JSON-able dict: n, accuracy, macro_f1, ece, per_class {name: {precision, recall, f1, support}},
        confusion (list of rows).
    """
    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true, dtype=int)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs has shape {probs.shape}, expected (n, {len(classes)}) for classes {list(classes)}")
    predicted = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, predicted, len(classes))
    scores = per_class_scores(y_true, predicted, len(classes))
    per_class = {name: {"precision": rnd(scores["precision"][i]), "recall": rnd(scores["recall"][i]),
                        "f1": rnd(scores["f1"][i]), "support": int(scores["support"][i])}
                 for i, name in enumerate(classes)}
    present = scores["support"] > 0  # macro-F1 over the classes present in this set
    return {"n": int(len(y_true)), "accuracy": rnd(np.trace(cm) / cm.sum()),
            "macro_f1": rnd(scores["f1"][present].mean()),
            "ece": rnd(expected_calibration_error(probs, y_true, ece_bins)),
            "per_class": per_class, "confusion": cm.tolist()}
