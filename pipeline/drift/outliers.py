"""Current images that look most unlike the reference, and a thumbnail sheet of them.

Two scores per current image:

* domain-classifier score: out-of-fold probability, from a logistic regression trained to tell
  current rows from reference rows on the (PCA-reduced) embeddings, that the row is "current". Each
  row is scored by a model that never saw it, so the scores are honest; their ROC AUC is a readable
  effect size (0.5: indistinguishable, 1.0: fully separable).
* k-NN distance: mean distance to the k nearest reference embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.common.figures import plt, save_figure

__all__ = ["domain_classifier_scores", "knn_distances", "most_unlike", "save_thumbnails"]


def domain_classifier_scores(reference: np.ndarray, current: np.ndarray, folds: int = 5,
                             seed: int = 0) -> tuple[np.ndarray, float]:
    """Out-of-fold P(current) for each current row, and the classifier's ROC AUC over all rows.

    Args:
        reference: (n, k) reference features.
        current: (m, k) current features.
        folds: cross-validation folds (reduced when a side has fewer rows).
        seed: seed of the fold split.
    Returns:
        Scores (m,) in [0, 1] and the out-of-fold ROC AUC.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, len(reference), len(current))
    if folds < 2:
        raise ValueError(f"domain classifier needs >= 2 rows per side, got reference={len(reference)}, "
                         f"current={len(current)}")
    features = np.concatenate([reference, current])
    is_current = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    # Strong L2 (C=0.1): with few rows an unregularised classifier memorises rows and its scores are noise.
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced"))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, features, is_current, cv=split, method="predict_proba")[:, 1]
    return scores[len(reference):], float(roc_auc_score(is_current, scores))


def knn_distances(reference: np.ndarray, current: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean Euclidean distance from each current row to its k nearest reference rows.

    Args:
        reference: (n, k) reference features.
        current: (m, k) current features.
        k: neighbours (capped at n).
    Returns:
        Distances (m,).
    """
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, len(reference))).fit(reference)
    distances, _ = nn.kneighbors(current)
    return distances.mean(axis=1)


def most_unlike(scores: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` highest scores, highest first (ties broken by index, so stable)."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return order[:top]


def save_thumbnails(images: Sequence[Image.Image], captions: Sequence[str], target: str | Path,
                    columns: int = 6, title: str = "") -> Path:
    """Write a PNG sheet of thumbnails with a caption under each.

    Args:
        images: the images (any mode/size; shown at the same size).
        captions: one short line per image.
        target: PNG path (written atomically).
        columns: thumbnails per row.
        title: sheet title.
    Returns:
        The path written.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image.convert("RGB"), interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, target, dpi=100, tight=False)
