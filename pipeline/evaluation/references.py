"""Trivial references a trained classifier must beat, computed in the same run on the same images.

- majority class: the best constant answer on the test split (its largest class share);
- pixel logistic regression: a linear probe (solved like the transfer probe, penalty chosen on val)
  on the raw pixels, downscaled to ``PIXEL_SIDE`` px.

A scratch model below either, or one that predicts one class for every image, is a failed training
(``training_problem``): it is reported as such and never counted as evidence for transfer.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pipeline.data.shards import ShardImageDataset
from pipeline.models.preprocess import Preprocessing
from pipeline.training.probe import ProbeFit, fit_linear_probe

__all__ = ["PIXEL_SIDE", "majority_accuracy", "fit_pixel_probe", "pixel_probe_predictions", "pixel_probe_accuracy",
           "training_problem"]
PIXEL_SIDE = 16


def majority_accuracy(test_labels: Sequence[int]) -> float:
    """Accuracy of the best constant prediction on these labels."""
    counts = np.bincount(np.asarray(test_labels, dtype=int))
    return round(float(counts.max() / counts.sum()), 4)


def _pixels(dataset: str | os.PathLike, split: str, ids: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    transform = Preprocessing(PIXEL_SIDE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).pixels()
    images = ShardImageDataset(dataset, split, transform, ids=ids)
    x = np.stack([images[i][0].numpy().ravel() for i in range(len(images))]) if len(images) else np.zeros((0, 1))
    labels = np.asarray(images.labels, dtype=int)
    images.close()
    return x, labels


def fit_pixel_probe(dataset: str | os.PathLike, train_ids: Sequence[str], val_ids: Sequence[str],
                    num_classes: int, cs: Sequence[float]) -> ProbeFit:
    """The pixel logistic regression trained on ``train_ids`` (penalty chosen on ``val_ids``)."""
    train_x, train_y = _pixels(dataset, "train", train_ids)
    val_x, val_y = _pixels(dataset, "val", val_ids)
    return fit_linear_probe(train_x, train_y, val_x, val_y, num_classes, cs)


def pixel_probe_predictions(probe: ProbeFit, dataset: str | os.PathLike, split: str,
                            ids: Sequence[str] | None) -> np.ndarray:
    """Label indices the pixel probe predicts for a split's images (or ``ids`` of it), in row order."""
    x, _ = _pixels(dataset, split, ids)
    return probe.logits(x).argmax(1) if len(x) else np.zeros(0, dtype=int)


def pixel_probe_accuracy(dataset: str | os.PathLike, train_ids: Sequence[str], val_ids: Sequence[str],
                         num_classes: int, cs: Sequence[float]) -> float:
    """Test accuracy of a logistic regression on raw pixels trained on ``train_ids``."""
    probe = fit_pixel_probe(dataset, train_ids, val_ids, num_classes, cs)
    test_x, test_y = _pixels(dataset, "test", None)
    return round(float((probe.logits(test_x).argmax(1) == test_y).mean()), 4)


def training_problem(accuracy: float, classes_predicted: int, converged: bool, references: dict[str, float],
                     cap_epochs: int | None = None) -> str | None:
    """Why a scratch model cannot serve as a baseline, in words, or None when it can."""
    if classes_predicted <= 1:
        return "failed training: it predicts one class for every test image"
    below = {name: value for name, value in references.items() if accuracy < value}
    if below:
        names = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in below.items())
        return f"failed training: its test accuracy {accuracy} is below a trivial reference ({names})"
    if not converged:
        cap = f" of {cap_epochs} epochs" if cap_epochs else ""
        return f"did not converge: it reached its cap{cap} while val accuracy was still rising"
    return None
