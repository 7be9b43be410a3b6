"""The scratch recipe's plan and batch (its training runs in tests/test_evaluation_verdict.py and
test_stage_evaluate.py)."""

from __future__ import annotations

from pipeline.training.data import small_data_batch
from pipeline.training.recipes import scratch_plan

BLOCKS = ["stem", "body", "head"]


def test_scratch_trains_every_block_at_one_rate_with_batchnorm_learning():
    plan = scratch_plan("m", BLOCKS, [10, 20, 5], epochs=40, lr=0.003)
    (phase,) = plan.phases
    assert phase.n_frozen == 0 and phase.trainable_params == 35 and phase.epochs == 40
    assert set(phase.lrs.values()) == {0.003} and plan.bn_policy == "train" and not phase.probe_cs


def test_small_train_sets_get_small_batches():
    assert small_data_batch(1240, 64) == 64  # the configured batch
    assert small_data_batch(100, 64) == 25  # a quarter of the images
    assert small_data_batch(20, 64) == 8 and small_data_batch(5, 64) == 5  # at least 8, at most all
    assert small_data_batch(100, 16) == 16
