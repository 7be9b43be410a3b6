"""Evaluation library: metrics, label efficiency on a real task, interpretation, the report
(the verdict rule and the intervals: tests/test_evaluation_verdict.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from pipeline.evaluation.interpret import (PixelModel, adversarial_pair, class_ideal_inputs, fgsm_accuracy,
                                           total_variation)
from pipeline.evaluation.label_efficiency import run_curve, sample_per_class, summarise_curve, time_saved
from pipeline.evaluation.metrics import (classification_metrics, confusion_matrix, expected_calibration_error,
                                         per_class_scores)
from pipeline.training.probe import fit_linear_probe
from pipeline.models import Preprocessing


def test_per_class_scores_match_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 3, 200)  # class 3 is never predicted
    scores = per_class_scores(y_true, y_pred, 4)
    ref = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for mine, theirs in zip(("precision", "recall", "f1", "support"), ref):
        np.testing.assert_allclose(scores[mine], theirs)


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="prediction index out of range 0..1"):
        confusion_matrix([0, 1], [0, 2], 2)


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    calibrated = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(calibrated, [0] * 8 + [1] * 2) == pytest.approx(0.0)
    overconfident = np.tile([1.0, 0.0], (10, 1))
    assert expected_calibration_error(overconfident, [0] * 5 + [1] * 5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(np.ones((3, 2)), [0, 1, 0])


def test_classification_metrics_names_the_bad_shape_and_scores_a_perfect_model():
    probs = np.eye(3)[[0, 1, 2, 2]]
    out = classification_metrics(probs, [0, 1, 2, 2], ["a", "b", "c"])
    assert out["accuracy"] == 1.0 and out["macro_f1"] == 1.0 and out["ece"] == 0.0
    assert out["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]] and out["per_class"]["c"]["support"] == 2
    with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
        classification_metrics(probs, [0, 1, 2, 2], ["a", "b"])


def test_sample_per_class_is_stratified_and_seeded():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    picked = sample_per_class(labels, 3, seed=1)
    assert np.bincount(labels[picked]).tolist() == [3, 3, 2]  # class 2 has only two
    assert np.array_equal(picked, sample_per_class(labels, 3, seed=1))
    assert not np.array_equal(picked, sample_per_class(labels, 3, seed=2))
    assert len(sample_per_class(labels, None, seed=0)) == len(labels)


def _features_task(seed: int = 0):
    """A real learning task where 'pretrained' features are informative and raw inputs are noisy."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 100)
    good = np.eye(3)[y] * 2 + rng.normal(0, 0.7, (300, 3))
    raw = np.hstack([good[:, :1] * 0.3, rng.normal(0, 1, (300, 20))])  # weak signal buried in noise
    return y, good, raw


def test_label_efficiency_curve_on_a_real_task():
    y, good, raw = _features_task()
    train, val, test = np.arange(0, 300, 3), np.arange(1, 300, 3), np.arange(2, 300, 3)

    def side(features):
        def run(idx, seed):
            fit = fit_linear_probe(features[train][idx], y[train][idx], features[val], y[val], 3, [0.01, 0.1, 1.0])
            accuracy = float((fit.logits(features[test]).argmax(1) == y[test]).mean())
            return {"accuracy": accuracy, "converged": True, "steps": fit.iterations, "seconds": fit.seconds}
        return run

    rows = run_curve(y[train], [2, 10], [0, 1, 2], side(good), side(raw))
    assert len(rows) == 2 * 3 * 2 and {r["n_labels"] for r in rows} == {6, 30}
    summary = summarise_curve(rows, n_test=len(test))
    assert [s["name"] for s in summary] == ["2/class", "10/class"]
    assert summary[1]["verdict"] == "positive" and summary[1]["transfer"]["low"] > summary[1]["scratch"]["high"]


def test_the_solved_probe_is_the_optimum_a_trained_head_only_approaches():
    _, good, _ = _features_task(1)
    y = np.repeat(np.arange(3), 100)
    fit = fit_linear_probe(good[::2], y[::2], good[1::2], y[1::2], 3, [0.001, 0.1, 10.0])
    mean = good[::2].mean(0)
    scale = np.linalg.norm(good[::2] - mean, axis=1).mean()  # centred, then one scale for every feature
    reference = LogisticRegression(C=fit.c, max_iter=5000, tol=1e-10).fit((good[::2] - mean) / scale, y[::2])
    np.testing.assert_allclose(fit.logits(good[1::2]), reference.decision_function((good[1::2] - mean) / scale),
                               atol=1e-3)
    assert {c["c"] for c in fit.candidates} == {0.001, 0.1, 10.0} and fit.val_accuracy > 0.9
    two = fit_linear_probe(good[y < 2][::2], y[y < 2][::2], good[y < 2][1::2], y[y < 2][1::2], 3, [1.0])
    assert two.weight.shape == (3, 3) and two.bias[2] < -10  # a class absent from training is never predicted


def test_time_saved():
    scratch = [{"elapsed_s": t, "val_accuracy": a} for t, a in [(10, 0.5), (20, 0.7), (30, 0.8), (40, 0.78)]]
    transfer = [{"elapsed_s": t, "val_accuracy": a} for t, a in [(5, 0.85), (10, 0.9)]]
    out = time_saved(transfer, scratch)
    assert out == {"target_accuracy": 0.8, "transfer_s": 5.0, "scratch_s": 30.0, "saved_s": 25.0, "speedup": 6.0,
                   "reached": "yes"}
    assert time_saved(transfer[:1], [{"elapsed_s": 1, "val_accuracy": 0.99}])["reached"] == "never"


@pytest.fixture(scope="module")
def stripes_model():
    """A tiny CNN trained to tell horizontal from vertical stripes (16 px)."""
    torch.manual_seed(0)
    base = torch.zeros(2, 3, 16, 16)
    base[0, :, ::4, :] = 1.0  # horizontal stripes
    base[1, :, :, ::4] = 1.0  # vertical stripes
    labels = torch.arange(64) % 2
    images = (base[labels] * 0.6 + 0.2 + 0.1 * torch.rand(64, 3, 16, 16)).clamp(0, 1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(128, 2))
    model = PixelModel(net, Preprocessing(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() == 1.0
    return model, images, labels


def test_class_ideal_inputs_raise_the_class_score_and_tv_smooths(stripes_model):
    model, _, _ = stripes_model
    smooth, probs = class_ideal_inputs(model, [0, 1], size=16, steps=60, tv_weight=0.5)
    rough, _ = class_ideal_inputs(model, [0, 1], size=16, steps=60, tv_weight=0.0)
    assert smooth.shape == (2, 3, 16, 16) and smooth.min() >= 0 and smooth.max() <= 1
    assert min(probs) > 0.9
    assert total_variation(smooth).mean() < total_variation(rough).mean()


def test_adversarial_pair_flips_with_a_bounded_perturbation(stripes_model):
    model, images, labels = stripes_model
    pair = adversarial_pair(model, images[0], int(labels[0]), step=2 / 255, max_steps=200)
    assert pair["flipped"] and pair["predicted"] != pair["label"]
    assert pair["linf"] <= pair["steps"] * 2 / 255 + 1e-4 and pair["l2"] > 0
    with pytest.raises(ValueError, match="correctly classified"):
        adversarial_pair(model, images[0], 1 - int(labels[0]))


def test_fgsm_accuracy_starts_clean_and_falls(stripes_model):
    model, images, labels = stripes_model
    acc = fgsm_accuracy(model, images, labels, [0.0, 0.3], batch_size=16)
    assert acc["0"] == 1.0 and acc["0.3"] < 1.0


def _tiny_metrics() -> dict:
    side = {"mean": 0.8, "low": 0.7, "high": 0.9, "std": 0.05, "n_seeds": 3, "identical_seeds": False,
            "converged": True, "not_converged_seeds": [], "failed_seeds": [], "steps": 30, "seconds": 0.5}
    scratch = {**side, "mean": 0.3, "low": 0.2, "high": 0.4, "steps": 400, "seconds": 20.0}
    scores = {"n": 10, "accuracy": 0.8, "macro_f1": 0.7812, "ece": 0.0421, "confusion": [[4, 1], [1, 4]],
              "per_class": {"a": {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5}}}
    full = {"n": 10, "finetuned_accuracy": 0.81, "scratch_accuracy": 0.93, "p_value": 0.031, "verdict": "negative",
            "reason": "all labels: scratch ahead", "test": "exact McNemar", "baseline_problem": None,
            "finetuned_interval": {"low": 0.5, "high": 0.95}, "scratch_interval": {"low": 0.66, "high": 0.99},
            "finetuned_only": 0, "scratch_only": 5, "difference": {"mean": -0.12, "low": -0.2, "high": -0.04}}
    return {"verdict": "negative", "verdict_reason": "all labels: scratch ahead", "interval_method": "t and Wilson",
            "recommended_model": "scratch", "recommended_reason": "the scratch baseline is better with all labels",
            "test_accuracy": {"finetuned": 0.81, "scratch": 0.93},
            "models": {"test": {"finetuned": scores}, "shift": {"finetuned": scores}},
            "cost": {"finetuned": {"trainable_params": 12810, "train_seconds": 3.5, "images_per_s": 99.1}},
            "label_efficiency": {"budgets": [{"name": "10/class", "budget": 10, "n_labels": 20, "transfer": side,
                                              "scratch": scratch, "gain": 0.5, "verdict": "positive",
                                              "reason": "at 10/class: transfer ahead"}],
                                 "skipped": ["25/class: above the 12 labels per class the run has"],
                                 "val_images": 20},
            "full_labels": full, "shift": None,
            "references": {"majority_class": 0.5, "pixel_logistic_regression": 0.6},
            "labels_saved": {"bound": "never", "reference": "the converged scratch baseline with all labels",
                             "target_accuracy": 0.93, "n_reference": 24, "labels_needed": None},
            "time_saved": {"target_accuracy": 0.5, "transfer_s": 1.25, "scratch_s": 9.5, "reached": "yes"}}


def test_report_puts_the_summary_first_embeds_figures_and_holds_every_number(tmp_path):
    from pipeline.evaluation.plots import plot_fgsm
    from pipeline.evaluation.report import flatten, fmt, write_report

    metrics = _tiny_metrics()
    png = plot_fgsm({"finetuned": {"0": 0.9, "0.01": 0.5}}, tmp_path / "fgsm.png")
    html = write_report(tmp_path / "r" / "report.html", metrics, {"fgsm": png}).read_text()
    # the headline first, then the all-labels comparison in words, with the numbers of the table below it
    assert html.index("NEGATIVE") < html.index("With all 24 labels, the fine-tuned model reaches 0.81 and the "
                                               "scratch baseline 0.93") < html.index("Label budgets")
    assert "With 10 labels per class (20 images, 3 seeds), the linear probe reaches 0.8 (0.7-0.9)" in html
    assert "scratch trained to convergence 0.3 (0.2-0.4) (scratch converged, about 400 steps" in html
    assert "25/class: above the 12 labels per class the run has" in html and "fine-tuned 1.25 s" in html
    assert "Promotion considers the scratch model" in html and html.count("data:image/png;base64,") == 1
    assert all(f">{fmt(v)}<" in html for v in flatten(metrics).values())
    assert flatten({"a": [{"b": 1}], "c": None}) == {"a.0.b": 1, "c": None}


def test_elapsed_curve_charges_the_overhead_up_front_for_cached_runs_else_spreads_it():
    from pipeline.evaluation.label_efficiency import elapsed_curve

    history = [{"epoch": 1, "seconds": 1.0, "val_accuracy": 0.5}, {"epoch": 2, "seconds": 1.0, "val_accuracy": 0.6}]
    assert [p["elapsed_s"] for p in elapsed_curve(history, 10.0, upfront=True)] == [9.0, 10.0]
    assert [p["elapsed_s"] for p in elapsed_curve(history, 10.0)] == [5.0, 10.0]
    assert [p["elapsed_s"] for p in elapsed_curve(history)] == [1.0, 2.0]


def test_the_report_says_when_scratch_training_failed_or_did_not_converge(tmp_path):
    from pipeline.evaluation.report import write_report

    metrics = _tiny_metrics()
    point = metrics["label_efficiency"]["budgets"][0]
    point.update(verdict="inconclusive", reason="at 10/class: scratch training failed for seed(s) [0, 2] (one class "
                                                "predicted for every image, or no better than the majority class)")
    point["scratch"].update(failed_seeds=[0, 2])
    metrics["full_labels"].update(verdict="inconclusive", baseline_problem="did not converge: it reached its cap "
                                                                           "while val accuracy was still rising")
    html = write_report(tmp_path / "report.html", metrics, {}).read_text()
    assert "scratch training failed for seed(s) [0, 2]" in html
    assert "The scratch baseline did not converge: it reached its cap while val accuracy was still rising" in html
