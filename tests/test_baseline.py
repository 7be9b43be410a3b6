"""Baseline budget arithmetic and input errors (the training itself runs in tests/test_evaluate_stage.py)."""

from __future__ import annotations

import json

import pytest

from pipeline.stages.baseline import _finetune_metric
from pipeline.training.recipes import comparison_plan, epochs_for_steps, steps_per_epoch

BLOCKS = ["stem", "body", "head"]


def test_steps_follow_the_engine_loader():
    assert steps_per_epoch(1240, 64) == 19  # the ragged tail is dropped
    assert steps_per_epoch(30, 64) == 1  # a budget smaller than a batch still takes one step
    assert epochs_for_steps(40, 1240, 64) == 3 and epochs_for_steps(40, 30, 64) == 40


def test_comparison_plans_probe_the_head_or_train_everything():
    probe = comparison_plan("m", BLOCKS, [10, 20, 5], True, 5, 0.01, "eval_all")
    scratch = comparison_plan("m", BLOCKS, [10, 20, 5], False, 5, 0.003, "train")
    assert probe.phases[0].n_frozen == 2 and probe.phases[0].trainable_params == 5 and probe.phases[0].cacheable
    assert scratch.phases[0].n_frozen == 0 and scratch.phases[0].trainable_params == 35
    assert set(scratch.phases[0].lrs.values()) == {0.003}  # one lr for every block


def test_budget_figures_come_from_the_finetune_card_or_name_it(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"model": "m", "metrics": {}}))
    with pytest.raises(ValueError, match=r"card.json: no metrics.train_seconds"):
        _finetune_metric(tmp_path, "train_seconds")
    (tmp_path / "card.json").write_text(json.dumps({"metrics": {"train_seconds": 12.5, "epochs_run": 7}}))
    assert _finetune_metric(tmp_path, "train_seconds") == 12.5
    assert _finetune_metric(tmp_path, "epochs_run") == 7
