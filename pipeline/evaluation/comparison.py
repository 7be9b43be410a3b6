"""The pieces of the comparison of transfer against scratch (pipeline/evaluation/evaluate.py runs them): the
embeddings, the curve runs, the paired full-label and shift tests, the recommended model, and the metrics.json
the report renders.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.config import EvaluateParams
from pipeline.evaluation.intervals import INTERVAL_METHOD, PAIRED_TEST, paired_comparison, wilson
from pipeline.evaluation.label_efficiency import Draw, curve_row, elapsed_curve, summarise_curve, time_saved
from pipeline.evaluation.verdict import overall_verdict, paired_verdict
from pipeline.models import LoadedModel
from pipeline.training.probe import fit_linear_probe

__all__ = ["MODELS", "Features", "embed_splits", "history_curve", "label_efficiency",
           "full_label_comparison", "recommend", "assemble_metrics"]
MODELS = ("finetuned", "linear_probe", "scratch")


@dataclass
class Features:
    """Pretrained embeddings of the train pool, the val images and the test split, computed once."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    seconds_per_image: float
    weights_sha256: str | None


def embed_splits(model: LoadedModel, dataset: os.PathLike, train_ids: Sequence[str], val_ids: Sequence[str],
                 batch_size: int) -> Features:
    """Embed the train pool, the val images and the test split with a pretrained (headless) model."""
    started, parts = time.perf_counter(), []
    for split, ids in (("train", train_ids), ("val", val_ids), ("test", None)):
        out = model.outputs(model.inputs(dataset, split, ids), ("embeddings",), batch_size=batch_size,
                            desc=f"features {split}")
        parts += [out["embeddings"].numpy(), out.labels.numpy()]
    seconds = time.perf_counter() - started
    return Features(*parts, seconds / sum(len(p) for p in parts[1::2]), model.weights.get("sha256"))


def history_curve(path: Path, card: dict) -> list[dict]:
    """A trained model's learning curve (val accuracy against training seconds) from its history.csv."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: history missing (run the stage that trains this model first)")
    rows = pd.read_csv(path)
    missing = [c for c in ("epoch", "seconds", "val_accuracy") if c not in rows.columns]
    if missing:
        raise ValueError(f"{path}: history lacks columns {missing}")
    cached = any(mode != "off" for mode in card["metrics"].get("cache", []))
    return elapsed_curve(rows.to_dict("records"), card["metrics"].get("train_seconds"), upfront=cached)


def label_efficiency(scratch: dict, where: os.PathLike, features: Features, pool_ids: Sequence[str],
                     num_classes: int, cs: Sequence[float], confidence: float, min_gain: float) -> dict:
    """The transfer side on the draws the baseline stage trained scratch on, then both sides per budget.

    Args:
        scratch: the baseline stage's scratch_runs.json (pipeline/evaluation/scratch_curve.py).
        where: its path, for errors.
        features: the pretrained embeddings of the pool (in ``pool_ids`` order), the curve's val images and test.
        pool_ids: the label pool.
        num_classes: classes of the task.
        cs: the probe's penalties.
        confidence: interval coverage.
        min_gain: smallest transfer lead that counts as positive.
    Returns:
        ``budgets`` (summaries and verdicts) and ``runs`` (both sides, draw by draw).
    """
    position = {image_id: i for i, image_id in enumerate(pool_ids)}
    rows = []
    for run in scratch["runs"]:
        outside = [i for i in run["train_ids"] if i not in position]
        if outside:
            raise ValueError(f"{where}: the {run['name']} seed {run['seed']} draw names {len(outside)} image(s) "
                             f"outside the label pool (e.g. {outside[0]}): re-run `tlops baseline`")
        draw = Draw(run["budget"], run["seed"], np.sort([position[i] for i in run["train_ids"]]))
        started = time.perf_counter()
        fit = fit_linear_probe(features.train[draw.indices], features.train_labels[draw.indices], features.val,
                               features.val_labels, num_classes, cs)
        predicted = fit.logits(features.test).argmax(1)
        seconds = fit.seconds + features.seconds_per_image * (len(draw.indices) + len(features.val))
        transfer = {"accuracy": round(float((predicted == features.test_labels).mean()), 4), "converged": True,
                    "steps": fit.iterations, "c": fit.c, "seconds": round(seconds, 3),
                    "classes_predicted": int(np.unique(predicted).size), "weights_sha256": features.weights_sha256}
        rows += [curve_row(draw, features.train_labels, "transfer", transfer, time.perf_counter() - started),
                 {k: v for k, v in run.items() if k != "train_ids"}]
    return {"budgets": summarise_curve(rows, len(features.test_labels), confidence, min_gain), "runs": rows}


def full_label_comparison(name: str, finetuned_correct: np.ndarray, scratch_correct: np.ndarray,
                          baseline_problem: str | None, cfg: EvaluateParams, seed: int) -> dict:
    """The fine-tuned model against the scratch baseline on the same images: paired test and verdict."""
    paired = paired_comparison(finetuned_correct, scratch_correct, cfg.confidence, seed=seed)
    verdict, reason = paired_verdict(name, paired, cfg.alpha, baseline_problem)
    intervals = {side: dict(zip(("low", "high"), (round(v, 4) for v in wilson(paired[key], paired["n"],
                                                                              cfg.confidence))))
                 for side, key in (("finetuned", "accuracy_a"), ("scratch", "accuracy_b"))}
    return {"n": paired["n"], "finetuned_accuracy": paired["accuracy_a"], "scratch_accuracy": paired["accuracy_b"],
            "finetuned_interval": intervals["finetuned"], "scratch_interval": intervals["scratch"],
            "finetuned_only": paired["a_only"], "scratch_only": paired["b_only"], "test": PAIRED_TEST,
            "p_value": paired["p_value"], "difference": paired["difference"], "verdict": verdict, "reason": reason,
            "baseline_problem": baseline_problem}


def recommend(full_labels: dict) -> tuple[str, str]:
    """The model the promotion gate should consider: scratch only when it beats the fine-tune on all labels."""
    if full_labels["verdict"] == "negative":
        return "scratch", f"the scratch baseline is better with all labels ({full_labels['reason']})"
    return "finetuned", f"the fine-tuned model is not worse with all labels ({full_labels['reason']})"


def assemble_metrics(parts: dict[str, Any], scores: dict, learning: dict, explained: dict,
                     models: dict[str, LoadedModel], probe_seconds: float, classes: list[str],
                     show: list[int]) -> dict:
    """Everything metrics.json holds (the report renders exactly this).

    Args:
        parts: curve, full_labels, shift (None when the shift set has no labels), shift_unscored (why, or None),
            references, labels_saved, recommended_model/_reason, budgets_skipped, image_size, val_images.
        scores: per model: test and shift metrics, robustness, images/s.
        learning: the fine-tuned and scratch learning curves.
        explained: per model: ideal inputs, adversarial pairs, FGSM.
        models: the three models (their weights fingerprints).
        probe_seconds: the full-label probe's fit time.
        classes: class names.
        show: the visualised class indices.
    """
    curve = parts["curve"]
    verdict, reason = overall_verdict(curve["budgets"], parts["full_labels"], parts["shift"])
    adversarial = {name: [{k: v for k, v in pair.items() if k not in ("original", "adversarial")}
                          for pair in e["pairs"]] for name, e in explained.items()}
    transfer_weights = sorted({r["weights_sha256"] for r in curve["runs"] if r["side"] == "transfer"
                               and r["weights_sha256"]})
    return {
        "verdict": verdict, "verdict_reason": reason, "interval_method": INTERVAL_METHOD,
        "recommended_model": parts["recommended_model"], "recommended_reason": parts["recommended_reason"],
        "full_labels": parts["full_labels"], "shift": parts["shift"], "shift_unscored": parts["shift_unscored"],
        "references": parts["references"],
        "label_efficiency": {"budgets": curve["budgets"], "skipped": parts["budgets_skipped"],
                             "image_size": parts["image_size"], "val_images": parts["val_images"],
                             "transfer_weights_sha256": transfer_weights, "runs": curve["runs"]},
        "labels_saved": parts["labels_saved"],
        "time_saved": time_saved(learning["finetuned"], learning["scratch"]),
        "test_accuracy": {name: scores[name]["test"]["accuracy"] for name in MODELS},
        "shift_accuracy": {name: (scores[name]["shift"] or {}).get("accuracy") for name in MODELS},
        "models": {split: {name: scores[name][split] for name in MODELS} for split in ("test", "shift")
                   if scores["finetuned"][split] is not None},  # an unlabelled shift set has no metrics
        "robustness": {name: scores[name]["robustness"] for name in MODELS},
        "cost": _cost(models, scores, probe_seconds, len(classes)),
        "weights": {name: model.fingerprint() for name, model in models.items()},
        "fgsm": {name: e["fgsm"] for name, e in explained.items()},
        "adversarial": adversarial,
        "ideal_inputs": {name: {classes[c]: p for c, p in zip(show, e["ideal"][1])} for name, e in explained.items()},
    }


def _cost(models: dict[str, LoadedModel], scores: dict, probe_seconds: float, num_classes: int) -> dict[str, dict]:
    """Per model: the parameters it trained, its training seconds and its inference throughput."""
    ft_card, sc_card = models["finetuned"].card, models["scratch"].card
    head = models["linear_probe"].network.get_classifier().weight
    cost = {
        "finetuned": {"trainable_params": ft_card["freeze_plan"]["trainable_params"],
                      "train_seconds": ft_card["metrics"].get("train_seconds")},
        "linear_probe": {"trainable_params": int(np.prod(head.shape)) + num_classes,
                         "train_seconds": round(probe_seconds, 2)},
        "scratch": {"trainable_params": sc_card["metrics"]["trainable_params"],
                    "train_seconds": sc_card["metrics"]["train_seconds"]},
    }
    for name in MODELS:
        cost[name]["images_per_s"] = scores[name]["images_per_s"]
    return cost
