"""Evaluation library: metrics and intervals, the verdict rule, label efficiency, interpretation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from pipeline.evaluation.interpret import (PixelModel, adversarial_pair, class_ideal_inputs, fgsm_accuracy,
                                           total_variation)
from pipeline.evaluation.label_efficiency import (labels_saved, run_curve, sample_per_class, summarise_curve,
                                                  time_saved)
from pipeline.evaluation.metrics import (classification_metrics, confusion_matrix, expected_calibration_error,
                                         interval, per_class_scores)
from pipeline.evaluation.verdict import compare_intervals, overall_verdict
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


def test_t_interval_matches_formula_and_bootstrap_stays_in_range():
    out = interval([0.8, 0.9, 1.0])
    assert out["mean"] == 0.9 and out["n"] == 3
    assert out["high"] - out["mean"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), abs=1e-3)
    boot = interval([0.8, 0.9, 1.0], method="bootstrap")
    assert 0.8 <= boot["low"] < 0.9 < boot["high"] <= 1.0
    assert interval([0.5])["low"] == interval([0.5])["high"] == 0.5
    with pytest.raises(ValueError, match="'z'"):
        interval([1, 2], method="z")


def test_verdict_rule():
    hi, lo, mid = ({"mean": m, "low": m - 0.02, "high": m + 0.02} for m in (0.9, 0.6, 0.89))
    assert compare_intervals(hi, lo) == "positive"
    assert compare_intervals(lo, hi) == "negative"
    assert compare_intervals(hi, mid) == "no_gain"
    assert compare_intervals(hi, lo, min_gain=0.5) == "no_gain"
    assert overall_verdict(["positive", "no_gain"]) == "positive"
    assert overall_verdict(["positive", "negative"]) == "negative"
    assert overall_verdict(["no_gain"]) == "no_gain"
    with pytest.raises(ValueError, match="low <= mean <= high"):
        compare_intervals({"mean": 1, "low": 2, "high": 3}, lo)


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
    train, test = np.arange(0, 300, 2), np.arange(1, 300, 2)

    def train_fn(idx, seed, pretrained):
        feats = good if pretrained else raw
        clf = LogisticRegression(max_iter=500, random_state=seed).fit(feats[train][idx], y[train][idx])
        return {"accuracy": float(clf.score(feats[test], y[test]))}

    rows = run_curve(y[train], [2, 10, None], [0, 1, 2], train_fn)
    assert len(rows) == 3 * 3 * 2 and {r["n_labels"] for r in rows} == {6, 30, 150}
    summary = summarise_curve(rows)
    assert [s["name"] for s in summary] == ["2/class", "10/class", "all"]
    assert summary[0]["verdict"] == "positive"
    saved = labels_saved(summary)
    assert saved["bound"] in ("at_most", "exact") and saved["labels_saved"] > 0.5


def _summary(points):
    return [{"name": f"{n}", "n_labels": n, "transfer": {"mean": t}, "scratch": {"mean": s}} for n, t, s in points]


def test_labels_saved_interpolates_and_says_never():
    saved = labels_saved(_summary([(10, 0.5, 0.3), (50, 0.9, 0.6), (100, 0.95, 0.7)]))
    assert saved["labels_needed"] == pytest.approx(10 + (0.7 - 0.5) / 0.4 * 40)
    assert saved["labels_saved"] == pytest.approx(1 - 30 / 100) and saved["bound"] == "exact"
    assert labels_saved(_summary([(10, 0.8, 0.3), (100, 0.9, 0.7)]))["bound"] == "at_most"
    never = labels_saved(_summary([(10, 0.2, 0.3), (100, 0.5, 0.7)]))
    assert never["bound"] == "never" and never["labels_saved"] is None


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
    assert smooth.shape == (2, 3, 16, 16) and 0 <= smooth.min() and smooth.max() <= 1
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
    side = {"mean": 0.8, "low": 0.7, "high": 0.9, "std": 0.05, "n": 3}
    scratch = {"mean": 0.3, "low": 0.2, "high": 0.4, "std": 0.05, "n": 3}
    scores = {"n": 10, "accuracy": 0.8, "macro_f1": 0.7812, "ece": 0.0421, "confusion": [[4, 1], [1, 4]],
              "per_class": {"a": {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5}}}
    return {"verdict": "negative", "verdict_reason": "at 10/class: scratch wins",
            "test_accuracy": {"finetuned": 0.81, "scratch": 0.93},
            "models": {"test": {"finetuned": scores}, "shift": {"finetuned": scores}},
            "cost": {"finetuned": {"trainable_params": 12810, "train_seconds": 3.5, "images_per_s": 99.1}},
            "label_efficiency": {"curve": [{"name": "10/class", "budget": 10, "n_labels": 20, "transfer": side,
                                            "scratch": scratch, "gain": 0.5, "verdict": "positive"}],
                                 "steps": 25, "image_size": 32,
                                 "labels_saved": {"bound": "never", "reference": "10/class", "target_accuracy": 0.3,
                                                  "labels_needed": None}},
            "time_saved": {"target_accuracy": 0.5, "transfer_s": 1.25, "scratch_s": 9.5, "reached": "yes"}}


def test_report_puts_the_summary_first_embeds_figures_and_holds_every_number(tmp_path):
    from pipeline.evaluation.plots import plot_fgsm
    from pipeline.evaluation.report import flatten, fmt, write_report

    metrics = _tiny_metrics()
    png = plot_fgsm({"finetuned": {"0": 0.9, "0.01": 0.5}}, tmp_path / "fgsm.png")
    html = write_report(tmp_path / "r" / "report.html", metrics, {"fgsm": png}).read_text()
    assert html.index("NEGATIVE") < html.index("With 10 labels per class (20 images), transfer reaches 0.8")
    assert "scratch 0.3 (0.2-0.4)" in html and html.count("data:image/png;base64,") == 1
    # the trained models side by side: a scratch model ahead with all labels is said, not hidden by the curve
    assert "the fine-tuned model reaches 0.81 test accuracy and scratch 0.93: scratch is ahead" in html
    assert "(25 steps at 32 px)" in html and "transfer 1.25 s, scratch 9.5 s" in html
    assert all(f">{fmt(v)}<" in html for v in flatten(metrics).values())
    assert flatten({"a": [{"b": 1}], "c": None}) == {"a.0.b": 1, "c": None}


def test_elapsed_curve_charges_the_overhead_up_front_for_cached_runs_else_spreads_it():
    from pipeline.evaluation.label_efficiency import elapsed_curve

    history = [{"epoch": 1, "seconds": 1.0, "val_accuracy": 0.5}, {"epoch": 2, "seconds": 1.0, "val_accuracy": 0.6}]
    assert [p["elapsed_s"] for p in elapsed_curve(history, 10.0, upfront=True)] == [9.0, 10.0]
    assert [p["elapsed_s"] for p in elapsed_curve(history, 10.0)] == [5.0, 10.0]
    assert [p["elapsed_s"] for p in elapsed_curve(history)] == [1.0, 2.0]
