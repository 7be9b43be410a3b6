"""Label-efficiency curve: transfer and scratch at several label budgets x seeds, both sides at their best.

A budget is ``k`` labelled train images per class, drawn from the labels the run has (inside
``ingest.budget_per_class`` / ``budget_fraction``; a budget above that is not drawn). For each budget
and seed one stratified subset is drawn and *both* sides learn from that same subset:

- transfer: the linear probe on the pretrained features, solved to the optimum (pipeline.training.probe),
  its penalty chosen on the held-out val images;
- scratch: the same architecture from a seeded random start, trained to convergence by the one
  stopping rule (pipeline.training.recipes), stopped by the same val images.

Every run records its steps (L-BFGS iterations for the probe, optimizer steps for scratch), its
seconds and whether it converged; a scratch run that predicts one class, or does no better than the
majority class, is a failed training. "Labels saved" is measured against the converged scratch
baseline trained on all the labels, never against an under-trained one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pipeline.common.logs import get_logger, progress
from pipeline.evaluation.intervals import seed_interval
from pipeline.evaluation.verdict import budget_verdict

__all__ = ["SIDES", "RunFn", "budget_name", "sample_per_class", "drawable_budgets", "Draw", "curve_draws", "curve_row",
           "run_curve", "summarise_curve",
           "labels_saved", "time_to_reach", "time_saved", "elapsed_curve"]

SIDES = ("transfer", "scratch")
log = get_logger(__name__)
# fn(train indices, seed) -> {"accuracy", "converged", "steps", "seconds", "classes_predicted", ...}
RunFn = Callable[[np.ndarray, int], dict]


def budget_name(k: int | None) -> str:
    """Display name of a budget: ``5/class`` or ``all``."""
    return "all" if k is None else f"{k}/class"


def sample_per_class(labels: Sequence[int], k: int | None, seed: int) -> np.ndarray:
    """Draw ``k`` indices of each class (all of a class that has fewer), seeded.

    Args:
        labels: label index of every item.
        k: items per class, or None for every item.
        seed: seed of the draw; the same seed gives the same subset.
    Returns:
        Sorted indices into ``labels``.
    """
    labels = np.asarray(labels, dtype=int)
    if k is None:
        return np.arange(len(labels))
    if k < 1:
        raise ValueError(f"label budget {k}/class: must be at least 1")
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def drawable_budgets(labels: Sequence[int], budgets: Sequence[int]) -> tuple[list[int], list[str]]:
    """The budgets the labels the run has can give (k per class for every class), and why others are not drawn."""
    smallest = int(np.unique(np.asarray(labels, dtype=int), return_counts=True)[1].min())
    drawn = [k for k in budgets if k <= smallest]
    skipped = [f"{k}/class: above the {smallest} labels per class the run has (its label budget)"
               for k in budgets if k > smallest]
    return sorted(drawn), skipped


@dataclass(frozen=True)
class Draw:
    """One budget x seed of the curve: the train images both sides learn from."""

    budget: int
    seed: int
    indices: np.ndarray  # sorted indices into the label pool

    @property
    def name(self) -> str:
        return f"{budget_name(self.budget)} seed {self.seed}"


def curve_draws(labels: Sequence[int], budgets: Sequence[int], seeds: Sequence[int]) -> list[Draw]:
    """Every budget x seed's stratified draw from the label pool (:func:`sample_per_class`), budgets in order."""
    return [Draw(b, s, sample_per_class(labels, b, s)) for b in budgets for s in seeds]


def curve_row(draw: Draw, labels: Sequence[int], side: str, metrics: dict, wall_seconds: float) -> dict:
    """One run of the curve as the summaries read it: the draw's budget, seed and label counts with the run's
    own figures (``accuracy``, ``converged``, ``steps``, ``seconds`` at least)."""
    missing = {"accuracy", "converged", "steps", "seconds"} - set(metrics)
    if missing:
        raise ValueError(f"the {side} run of {draw.name} returned {sorted(metrics)}: it lacks {sorted(missing)}")
    log.info("%s %s: accuracy %.4f, %s, %d steps, %.1fs", side, draw.name, metrics["accuracy"],
             "converged" if metrics["converged"] else "NOT converged", metrics["steps"], metrics["seconds"])
    return {**metrics, "budget": draw.budget, "name": budget_name(draw.budget), "n_labels": len(draw.indices),
            "max_per_class": int(np.bincount(np.asarray(labels, dtype=int)[draw.indices]).max()), "seed": draw.seed,
            "side": side, "wall_seconds": round(wall_seconds, 3)}


def run_curve(labels: Sequence[int], budgets: Sequence[int], seeds: Sequence[int], transfer_fn: RunFn,
              scratch_fn: RunFn) -> list[dict]:
    """Both sides at every budget and seed, on the same subsets, one run after the other.

    (The pipeline runs the scratch side in the baseline stage, pipeline/evaluation/scratch_curve.py, and the
    transfer side in evaluate, on the draws that stage recorded; this is both at once, for studies.)

    Args:
        labels: label index of every train item the run has (the pool budgets are drawn from).
        budgets: k per class.
        seeds: seeds; each gives its own subset and its own initialisation and data order.
        transfer_fn: learns the transfer side from the given train indices.
        scratch_fn: learns the scratch side from the given train indices.
    Returns:
        One row per run (:func:`curve_row`).
    """
    rows = []
    for draw in progress(curve_draws(labels, budgets, seeds), desc="label-efficiency draws", unit="draw"):
        for side, fn in (("transfer", transfer_fn), ("scratch", scratch_fn)):
            started = time.perf_counter()
            metrics = fn(draw.indices, draw.seed)
            rows.append(curve_row(draw, labels, side, metrics, time.perf_counter() - started))
    return rows


def _side(rows: list[dict], n_test: int, confidence: float) -> dict:
    interval = seed_interval([r["accuracy"] for r in rows], n_test, confidence)
    return {**interval, "converged": all(r["converged"] for r in rows),
            "not_converged_seeds": [r["seed"] for r in rows if not r["converged"]],
            "failed_seeds": [r["seed"] for r in rows if r.get("failed")],
            "steps": int(round(np.mean([r["steps"] for r in rows]))),
            "seconds": round(float(np.mean([r["seconds"] for r in rows])), 3)}


def summarise_curve(rows: Sequence[dict], n_test: int, confidence: float = 0.95, min_gain: float = 0.0) -> list[dict]:
    """Each budget: both sides' mean, interval (valid accuracies), convergence, steps and seconds, and its verdict.

    Args:
        rows: output of :func:`run_curve`.
        n_test: test images each accuracy was measured on.
        confidence: interval coverage.
        min_gain: smallest transfer lead that counts as positive.
    Returns:
        One entry per budget, in increasing label count.
    """
    summary = []
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        sides = {side: _side([r for r in mine if r["side"] == side], n_test, confidence) for side in SIDES}
        verdict, reason = budget_verdict(name, sides["transfer"], sides["scratch"], min_gain)
        more_compute = sides["scratch"]["seconds"] >= sides["transfer"]["seconds"]
        summary.append({"name": name, "budget": mine[0]["budget"],
                        "n_labels": int(round(np.mean([r["n_labels"] for r in mine]))), **sides,
                        "gain": round(sides["transfer"]["mean"] - sides["scratch"]["mean"], 4),
                        "scratch_compute_at_least_transfer": more_compute,
                        "verdict": verdict, "reason": reason})
    return sorted(summary, key=lambda s: s["n_labels"])


def labels_saved(curve: Sequence[dict], n_all: int, transfer_all: float, scratch_all: float,
                 scratch_problem: str | None) -> dict:
    """Share of the labels transfer needs to match the converged scratch baseline trained on all of them.

    The transfer accuracy is interpolated linearly in label count between the curve's budgets and the
    fine-tuned model at all labels; the target is the scratch baseline's test accuracy with all labels.

    Args:
        curve: output of :func:`summarise_curve` (sorted by label count).
        n_all: the labels the run has.
        transfer_all: the fine-tuned model's test accuracy with all of them.
        scratch_all: the scratch baseline's test accuracy with all of them.
        scratch_problem: why the baseline cannot be the target (failed, not converged), or None.
    Returns:
        target_accuracy, reference, n_reference, labels_needed, share_needed, labels_saved and bound:
        ``exact`` (reached between two points), ``at_most`` (already at the smallest budget), ``never``,
        or ``unknown`` (no valid target: ``why`` says).
    """
    out = {"target_accuracy": scratch_all, "reference": "the converged scratch baseline with all labels",
           "n_reference": n_all}
    if scratch_problem:
        return {**out, "labels_needed": None, "share_needed": None, "labels_saved": None, "bound": "unknown",
                "why": f"the scratch baseline {scratch_problem}"}
    points = [(p["n_labels"], p["transfer"]["mean"]) for p in curve] + [(n_all, transfer_all)]
    for i, (n, accuracy) in enumerate(points):
        if accuracy < scratch_all:
            continue
        if i == 0:
            needed, bound = float(n), "at_most"
        else:
            n0, a0 = points[i - 1]
            needed, bound = n0 + (scratch_all - a0) / (accuracy - a0) * (n - n0), "exact"
        return {**out, "labels_needed": round(needed, 1), "share_needed": round(needed / n_all, 4),
                "labels_saved": round(1 - needed / n_all, 4), "bound": bound}
    return {**out, "labels_needed": None, "share_needed": None, "labels_saved": None, "bound": "never"}


def time_to_reach(curve: Sequence[dict], target: float, key: str = "val_accuracy",
                  clock: str = "elapsed_s") -> float | None:
    """Wall time at which a learning curve first reaches ``target`` (None: never).

    Args:
        curve: points in training order, each with ``key`` and ``clock``.
        target: the accuracy to reach.
        key: the accuracy field.
        clock: the elapsed-seconds field.
    Returns:
        Seconds, or None.
    """
    for point in curve:
        if point[key] >= target:
            return float(point[clock])
    return None


def time_saved(transfer_curve: Sequence[dict], scratch_curve: Sequence[dict], key: str = "val_accuracy",
               clock: str = "elapsed_s") -> dict:
    """Time for transfer to reach the converged scratch model's best validation accuracy, against scratch's own.

    Args:
        transfer_curve: the fine-tuned model's learning curve.
        scratch_curve: the scratch baseline's learning curve.
        key: the accuracy field of each point.
        clock: the elapsed-seconds field of each point.
    Returns:
        target_accuracy, transfer_s (None: never), scratch_s, saved_s and speedup (None when never).
    """
    if not scratch_curve or not transfer_curve:
        raise ValueError("time saved needs both learning curves (one point per evaluation at least)")
    target = max(p[key] for p in scratch_curve)
    transfer_s, scratch_s = time_to_reach(transfer_curve, target, key, clock), time_to_reach(scratch_curve, target,
                                                                                               key, clock)
    if transfer_s is None:
        return {"target_accuracy": round(target, 4), "transfer_s": None, "scratch_s": round(scratch_s, 3),
                "saved_s": None, "speedup": None, "reached": "never"}
    return {"target_accuracy": round(target, 4), "transfer_s": round(transfer_s, 3), "scratch_s": round(scratch_s, 3),
            "saved_s": round(scratch_s - transfer_s, 3),
            "speedup": round(scratch_s / transfer_s, 4) if transfer_s > 0 else None, "reached": "yes"}


def elapsed_curve(history: Sequence[dict], total_seconds: float | None = None, upfront: bool = False) -> list[dict]:
    """Learning curve from the engine's epoch history: cumulative training seconds and val accuracy.

    The engine's per-epoch ``seconds`` leave out feature caching and validation. When the run's total
    is known, that overhead is charged up front for a run that cached features (the cache is built
    before the first epoch) and spread evenly over the epochs otherwise (validation after each).

    Args:
        history: the engine's rows (``seconds`` per epoch, ``val_accuracy``).
        total_seconds: the run's whole training time (None: epoch seconds only).
        upfront: charge the overhead before the first epoch instead of spreading it.
    Returns:
        Points with epoch, elapsed_s and val_accuracy.
    """
    overhead = max((total_seconds or 0.0) - sum(row["seconds"] for row in history), 0.0)
    elapsed, per_epoch = (overhead, 0.0) if upfront else (0.0, overhead / max(len(history), 1))
    points = []
    for row in history:
        elapsed += row["seconds"] + per_epoch
        points.append({"epoch": row["epoch"], "elapsed_s": round(elapsed, 3), "val_accuracy": row["val_accuracy"]})
    return points
