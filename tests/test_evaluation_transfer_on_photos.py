"""Where pretrained features clearly help, the verdict says positive, against scratch trained to convergence.

The task (tests/support/photos.py): grayscale crops of seven scikit-image photographs, the class being
the photograph. ImageNet features tell them apart from two examples each; the same network trained
from scratch on those 14 images cannot, even when trained until its val accuracy stops rising
(measured over five seeds at 32 px: transfer 0.66 [0.58, 0.74], scratch 0.43 [0.31, 0.54], 260 steps a run on
average; at 48 px the gap was the same, transfer 0.82 [0.75, 0.87], scratch 0.57 [0.47, 0.67], at twice the
cost: 32 px keeps this test at about 80 s on one thread).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import validate_params
from pipeline.data.shards import read_classes, read_manifest
from pipeline.evaluation.comparison import embed_splits, label_efficiency
from pipeline.evaluation.references import majority_accuracy
from pipeline.evaluation.scratch_curve import scratch_side
from pipeline.models import LoadedModel
from pipeline.training.recipes import Setup
from tests.support.photos import write_photo_dataset

pytestmark = pytest.mark.slow  # real pretrained weights, five converged scratch runs
SIZE = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_dataset(tmp_path_factory.mktemp("photos") / "ds", {"train": 6, "val": 4, "test": 20}, size=SIZE)


@pytest.mark.timeout(1200)
def test_transfer_is_positive_at_a_small_budget_against_converged_scratch(photos):
    params = validate_params({"common": {"image_size": SIZE}})
    manifest = read_manifest(photos)
    pool, val = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    classes = read_classes(photos)
    model = LoadedModel.pretrained("efficientnet_lite0", len(classes), SIZE, classes=classes)
    pool_ids, val_ids = pool["id"].tolist(), val["id"].tolist()
    features = embed_splits(model, photos, pool_ids, val_ids, 256)
    setup = Setup(photos, "efficientnet_lite0", classes, SIZE, params.train, torch.device("cpu"), None)
    scratch = scratch_side(setup, params.baseline, pool_ids, pool["label_idx"].tolist(), val_ids, [2],
                           [0, 1, 2, 3, 4], majority_accuracy(features.test_labels)).curve
    curve = label_efficiency(scratch, "scratch_runs.json", features, pool_ids, len(classes), params.freeze.probe_cs,
                             params.evaluate.confidence, params.evaluate.min_gain)
    (point,) = curve["budgets"]
    assert point["scratch"]["converged"] and not point["scratch"]["failed_seeds"], point["reason"]
    assert point["verdict"] == "positive", point["reason"]
    assert point["transfer"]["low"] > point["scratch"]["high"] and point["scratch_compute_at_least_transfer"]
