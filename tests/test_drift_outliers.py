"""The current images most unlike the reference: domain-classifier and k-NN scores, thumbnail sheet."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.drift.outliers import domain_classifier_scores, knn_distances, most_unlike, save_thumbnails


def test_planted_outliers_rank_first_by_both_scores():
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=(300, 8)), rng.normal(size=(60, 8))
    current[:5] += 6.0  # five images from somewhere else
    scores, auc = domain_classifier_scores(reference, current, seed=0)
    assert set(most_unlike(scores, 5)) == set(range(5))
    assert set(most_unlike(knn_distances(reference, current), 5)) == set(range(5))
    assert auc > 0.5


def test_domain_classifier_auc_is_near_half_without_shift():
    rng = np.random.default_rng(1)
    _, auc = domain_classifier_scores(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)))
    assert 0.4 < auc < 0.6


def test_thumbnail_sheet_is_a_png(tmp_path):
    images = [Image.new("L", (16, 16), color=c) for c in (0, 128, 255)]
    path = save_thumbnails(images, ["a", "b", "c"], tmp_path / "sheet.png", columns=2, title="most unlike")
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.width > 100
    with pytest.raises(ValueError, match="captions"):
        save_thumbnails(images, ["a"], tmp_path / "bad.png")
