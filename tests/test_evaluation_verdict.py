"""The honest verdict: converged comparisons only, paired full-label tests, intervals that are accuracies.

Unit tests of the rule on constructed cases, and of the stopping rule on a real (tiny) training run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import BaselineParams, TrainParams
from pipeline.evaluation.intervals import paired_comparison, seed_interval, wilson
from pipeline.evaluation.label_efficiency import drawable_budgets, labels_saved, run_curve, summarise_curve
from pipeline.evaluation.references import majority_accuracy, training_problem
from pipeline.evaluation.verdict import budget_verdict, overall_verdict, paired_verdict
from pipeline.training.recipes import Setup, train_scratch
from tests.support.training_data import TINY_MODEL, write_dataset

LABELS = np.repeat(np.arange(3), 20)  # a train pool of 20 images per class


def _run(accuracy: float, converged: bool = True, **extra) -> dict:
    return {"accuracy": accuracy, "converged": converged, "steps": 100, "seconds": 1.0, **extra}


def _curve(transfer: list[float], scratch: list[float], **scratch_extra) -> list[dict]:
    values = {"transfer": iter(transfer), "scratch": iter(scratch)}
    rows = run_curve(LABELS, [5], [0, 1, 2], lambda i, s: _run(next(values["transfer"])),
                     lambda i, s: _run(next(values["scratch"]), **scratch_extra))
    return summarise_curve(rows, n_test=300)


def test_intervals_are_accuracies_and_identical_seeds_are_not_certainty():
    for values in ([1.0, 0.98, 1.0], [0.0, 0.05, 0.0], [0.1, 0.9, 0.5], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]):
        out = seed_interval(values, 50)
        assert 0.0 <= out["low"] <= out["mean"] <= out["high"] <= 1.0, out
        assert out["high"] - out["low"] > 0  # test-set noise remains even when every seed agrees
    same = seed_interval([0.8, 0.8, 0.8], 100)
    assert same["identical_seeds"] and same["std"] == 0.0 and same["low"] < 0.8 < same["high"]
    assert not seed_interval([0.7, 0.8, 0.75], 100)["identical_seeds"]
    assert wilson(0.0, 10)[0] == 0.0 and wilson(1.0, 10)[1] == pytest.approx(1.0)


def test_a_tie_on_all_labels_is_no_gain_and_under_trained_runs_cannot_make_it_positive():
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.9
    paired = paired_comparison(correct, correct.copy())
    assert paired["p_value"] == 1.0 and paired["difference"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    verdict, _ = paired_verdict("all labels", paired, 0.05, None)
    full = {"verdict": verdict, "reason": "tie"}
    assert verdict == "no_gain"
    # the curve's scratch runs stopped by the cap while improving: transfer far ahead, yet inconclusive
    budgets = _curve([0.95, 0.96, 0.94], [0.3, 0.35, 0.32], converged=False)
    assert budgets[0]["verdict"] == "inconclusive" and "still rising" in budgets[0]["reason"]
    assert budgets[0]["scratch"]["not_converged_seeds"] == [0, 1, 2]
    assert overall_verdict(budgets, full, None)[0] == "inconclusive"


def test_paired_test_finds_a_real_difference_and_names_the_winner():
    rng = np.random.default_rng(1)
    scratch = rng.random(500) < 0.80
    finetuned = scratch | (rng.random(500) < 0.5)  # right wherever scratch is, and on half of the rest
    paired = paired_comparison(finetuned, scratch)
    assert paired["b_only"] == 0 and paired["p_value"] < 1e-6 and paired["difference"]["low"] > 0
    assert paired_verdict("all labels", paired, 0.05, None)[0] == "positive"
    assert paired_verdict("all labels", paired_comparison(scratch, finetuned), 0.05, None)[0] == "negative"
    assert paired_verdict("all labels", paired, 0.05, "did not converge")[0] == "inconclusive"


def test_overall_verdict_reads_every_comparison():
    ahead = {"verdict": "positive", "reason": "transfer ahead"}
    tie = {"verdict": "no_gain", "reason": "tie"}
    behind = {"verdict": "negative", "reason": "scratch ahead"}
    assert overall_verdict([ahead], tie, tie) == ("positive", "transfer ahead; behind nowhere")
    assert overall_verdict([ahead], behind, None)[0] == "negative"
    assert overall_verdict([behind], ahead, None)[0] == "negative"
    assert overall_verdict([ahead], tie, behind)[0] == "no_gain"  # behind on the shift set: not positive
    assert overall_verdict([tie], tie, None)[0] == "no_gain"


def test_separated_intervals_decide_a_budget():
    positive = _curve([0.95, 0.96, 0.94], [0.50, 0.55, 0.52])
    assert positive[0]["verdict"] == "positive" and positive[0]["scratch"]["converged"]
    negative = _curve([0.50, 0.55, 0.52], [0.95, 0.96, 0.94])
    assert negative[0]["verdict"] == "negative"
    overlap = _curve([0.70, 0.80, 0.75], [0.72, 0.78, 0.74])
    assert overlap[0]["verdict"] == "no_gain"
    for side in ("transfer", "scratch"):
        assert {"mean", "low", "high", "converged", "steps", "seconds"} <= set(positive[0][side])


def test_a_scratch_run_that_predicts_one_class_is_failed_training():
    budgets = _curve([0.9, 0.9, 0.92], [0.34, 0.33, 0.34], failed=True, classes_predicted=1)
    assert budgets[0]["verdict"] == "inconclusive" and "scratch training failed" in budgets[0]["reason"]
    refs = {"majority_class": majority_accuracy([0, 0, 1, 2]), "pixel_logistic_regression": 0.6}
    assert refs["majority_class"] == 0.5
    assert "one class for every test image" in training_problem(0.5, 1, True, refs)
    assert "below a trivial reference (pixel logistic regression 0.6)" in training_problem(0.55, 3, True, refs)
    assert "did not converge" in training_problem(0.9, 3, False, refs, cap_epochs=4)
    assert training_problem(0.9, 3, True, refs) is None


def test_budgets_above_the_run_label_budget_are_not_drawn():
    drawn, skipped = drawable_budgets(np.repeat(np.arange(4), 5), [2, 5, 10])
    assert drawn == [2, 5] and skipped == ["10/class: above the 5 labels per class the run has (its label budget)"]
    rows = run_curve(np.repeat(np.arange(4), 5), drawn, [0, 1, 2], lambda i, s: _run(0.9), lambda i, s: _run(0.5))
    assert max(r["max_per_class"] for r in rows) == 5 and {r["n_labels"] for r in rows} == {8, 20}


def test_labels_saved_is_measured_against_the_converged_baseline_or_not_at_all():
    curve = _curve([0.80, 0.82, 0.81], [0.5, 0.52, 0.51])
    saved = labels_saved(curve, n_all=60, transfer_all=0.95, scratch_all=0.90, scratch_problem=None)
    assert saved["bound"] == "exact" and saved["target_accuracy"] == 0.90 and 15 < saved["labels_needed"] < 60
    unknown = labels_saved(curve, 60, 0.95, 0.90, "did not converge: it reached its cap")
    assert unknown["bound"] == "unknown" and unknown["labels_saved"] is None


def test_budget_verdict_refuses_an_interval_outside_the_accuracy_range():
    good = seed_interval([0.5, 0.6, 0.55], 100)
    scratch = {**good, "converged": True, "failed_seeds": [], "not_converged_seeds": []}
    with pytest.raises(ValueError, match="not an ordered accuracy interval"):
        budget_verdict("5/class", {"mean": 0.9, "low": 0.8, "high": 1.02}, scratch)


def test_the_stopping_rule_marks_a_capped_run_still_improving_as_not_converged(tmp_path):
    dataset = write_dataset(tmp_path / "ds", {"train": 30, "val": 12, "test": 12})
    from pipeline.data.shards import read_manifest

    ids = read_manifest(dataset).query("split == 'train'")["id"].tolist()
    loop = TrainParams(augment="none", min_epoch_steps=2)
    setup = Setup(dataset, TINY_MODEL, ["0", "1", "2"], 32, loop, torch.device("cpu"), None)
    capped = train_scratch(setup, BaselineParams(lr=0.01, patience=3, max_epochs=2), 0, ids)
    assert capped.fit.phases[-1]["stopped_by"] == "cap" and capped.fit.steps == 2 * 3  # 2 epochs of 30 // 8 steps
    assert not capped.fit.converged  # two epochs: its best epoch is within the last `patience`
    stopped = train_scratch(setup, BaselineParams(lr=0.01, patience=1, max_epochs=50), 0, ids)
    assert stopped.fit.converged and stopped.fit.phases[-1]["stopped_by"] == "patience"
