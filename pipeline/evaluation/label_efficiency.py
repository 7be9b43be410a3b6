"""Label-efficiency curve: transfer and scratch trained at several label budgets x seeds.

A budget is ``k`` labelled train images per class (or ``None``: all of them). For each budget and
seed one stratified subset is drawn and *both* sides train on that same subset with that seed, so
the comparison is paired. From the curve come "labels saved" (the share of labels the transfer
model needs to match scratch trained on all of them) and, from learning curves, "time saved".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from pipeline.common.logs import get_logger, progress
from pipeline.evaluation.metrics import interval, rnd
from pipeline.evaluation.verdict import compare_intervals
from pipeline.freezing.plan import FreezePlan
from pipeline.training.recipes import Setup, epochs_for_steps, train_one

__all__ = ["SIDES", "TrainFn", "budget_name", "sample_per_class", "run_curve", "summarise_curve",
           "labels_saved", "time_to_reach", "time_saved", "curve_train_fn", "elapsed_curve"]

SIDES = ("transfer", "scratch")
log = get_logger(__name__)
# train_fn(train indices, seed, pretrained) -> metrics with at least "accuracy" (on the held-out set)
TrainFn = Callable[[np.ndarray, int, bool], dict]


def budget_name(k: int | None) -> str:
    """Display name of a budget: ``5/class`` or ``all``."""
    return "all" if k is None else f"{k}/class"


def sample_per_class(labels: Sequence[int], k: int | None, seed: int) -> np.ndarray:
    """Draw ``k`` indices of each class (all of a class that has fewer), seeded.

    Args:
        labels: label index of every train item.
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


@dataclass(frozen=True)
class _Run:
    budget: int | None
    seed: int
    side: str


def run_curve(labels: Sequence[int], budgets: Sequence[int | None], seeds: Sequence[int],
              train_fn: TrainFn) -> list[dict]:
    """Train both sides at every budget and seed.

    Args:
        labels: label index of every train item (the pool budgets are drawn from).
        budgets: k per class for each budget (None = all labels).
        seeds: seeds; each gives its own subset and its own initialisation/order.
        train_fn: trains one model on the given indices and returns its metrics.
    Returns:
        One row per run: budget, name, n_labels, seed, side, accuracy, seconds (+ train_fn's extras).
    """
    runs = [_Run(b, s, side) for b in budgets for s in seeds for side in SIDES]
    rows = []
    for run in progress(runs, desc="label-efficiency runs", unit="run"):
        indices = sample_per_class(labels, run.budget, run.seed)
        started = time.perf_counter()
        metrics = train_fn(indices, run.seed, run.side == "transfer")
        if "accuracy" not in metrics:
            raise ValueError(f"train_fn returned {sorted(metrics)}: it must return at least 'accuracy'")
        rows.append({**metrics, "budget": run.budget, "name": budget_name(run.budget), "n_labels": len(indices),
                     "seed": run.seed, "side": run.side, "seconds": rnd(time.perf_counter() - started)})
        log.debug("%s %s seed %d: accuracy %.4f", run.side, budget_name(run.budget), run.seed, metrics["accuracy"])
    return rows


def summarise_curve(rows: Sequence[dict], confidence: float = 0.95, method: str = "t",
                    min_gain: float = 0.0) -> list[dict]:
    """Mean and interval of each side at each budget, with the per-budget verdict.

    Args:
        rows: output of :func:`run_curve`.
        confidence: interval coverage.
        method: ``t`` or ``bootstrap`` (see :func:`pipeline.evaluation.metrics.interval`).
        min_gain: smallest transfer lead that counts as positive.
    Returns:
        One entry per budget, in increasing label count: name, budget, n_labels, transfer, scratch
        (intervals), gain (transfer mean - scratch mean), verdict.
    """
    names = list(dict.fromkeys(r["name"] for r in rows))
    summary = []
    for name in names:
        mine = [r for r in rows if r["name"] == name]
        sides = {side: interval([r["accuracy"] for r in mine if r["side"] == side], confidence, method)
                 for side in SIDES}
        summary.append({"name": name, "budget": mine[0]["budget"],
                        "n_labels": int(round(np.mean([r["n_labels"] for r in mine]))), **sides,
                        "gain": rnd(sides["transfer"]["mean"] - sides["scratch"]["mean"]),
                        "verdict": compare_intervals(sides["transfer"], sides["scratch"], min_gain)})
    return sorted(summary, key=lambda s: s["n_labels"])


def labels_saved(summary: Sequence[dict]) -> dict:
    """Share of labels transfer needs to match scratch trained on the largest budget.

    The transfer mean accuracy is interpolated linearly in label count between budgets; the target is
    the scratch mean at the largest budget (all labels when the curve includes ``all``).

    Args:
        summary: output of :func:`summarise_curve` (sorted by label count).
    Returns:
        target_accuracy, reference (budget name), n_reference, labels_needed, share_needed,
        labels_saved (1 - share_needed) and bound: ``exact`` (reached between two budgets),
        ``at_most`` (already reached at the smallest budget) or ``never`` (labels_saved None).
    """
    if not summary:
        raise ValueError("labels saved: the label-efficiency curve is empty")
    ref = summary[-1]
    target, n_ref = ref["scratch"]["mean"], ref["n_labels"]
    points = [(s["n_labels"], s["transfer"]["mean"]) for s in summary]
    out = {"target_accuracy": target, "reference": ref["name"], "n_reference": n_ref}
    for i, (n, acc) in enumerate(points):
        if acc < target:
            continue
        if i == 0:
            needed, bound = float(n), "at_most"
        else:
            (n0, a0) = points[i - 1]
            needed, bound = n0 + (target - a0) / (acc - a0) * (n - n0), "exact"
        return {**out, "labels_needed": rnd(needed), "share_needed": rnd(needed / n_ref),
                "labels_saved": rnd(1 - needed / n_ref), "bound": bound}
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
    """Time for transfer to reach scratch's best validation accuracy, against scratch's own time.

    Args:
        transfer_curve: the transfer model's learning curve.
        scratch_curve: the scratch model's learning curve.
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
        return {"target_accuracy": rnd(target), "transfer_s": None, "scratch_s": rnd(scratch_s),
                "saved_s": None, "speedup": None, "reached": "never"}
    return {"target_accuracy": rnd(target), "transfer_s": rnd(transfer_s), "scratch_s": rnd(scratch_s),
            "saved_s": rnd(scratch_s - transfer_s), "speedup": rnd(scratch_s / transfer_s) if transfer_s > 0 else None,
            "reached": "yes"}


def curve_train_fn(setup: Setup, train_ids: Sequence[str], val_ids: Sequence[str] | None, steps: int,
                   probe_lr: float, scratch_lr: float, transfer_plan: FreezePlan | None = None) -> TrainFn:
    """The ``train_fn`` of the label-efficiency curve: one engine run per (subset, seed, side).

    Both sides train on the same subset for the same number of optimizer steps: ``steps`` (linear
    probe vs scratch), or the transfer plan's planned epochs when a plan is given. The transfer side
    starts from the selection's weights (``setup.weights``), whose sha256 each run records.

    Args:
        setup: what the runs share (image size of the curve included).
        train_ids: the train pool; the curve's indices point into it.
        val_ids: val images picking each run's best epoch.
        steps: optimizer steps per run (without a transfer plan).
        probe_lr: learning rate of the linear probe.
        scratch_lr: learning rate of scratch.
        transfer_plan: replay this freeze plan on the transfer side instead of a linear probe.
    Returns:
        ``train_fn(indices, seed, pretrained) -> {"accuracy", "train_seconds", "epochs", "weights_sha256"}``.
    """
    # curve runs are throwaway: an epoch of a tiny run costs less than writing its checkpoint
    throwaway = replace(setup, checkpoints=None)

    def train_fn(indices: Sequence[int], seed: int, pretrained: bool) -> dict:
        ids = [train_ids[i] for i in indices]
        if transfer_plan is not None:
            epochs = sum(phase.epochs for phase in transfer_plan.phases)
        else:
            epochs = epochs_for_steps(steps, len(ids), setup.cfg.batch_size)
        plan = transfer_plan if pretrained else None
        run = train_one(throwaway, plan, pretrained, seed, ids, val_ids, epochs, probe_lr if pretrained else scratch_lr)
        return {"accuracy": run.test["accuracy"], "train_seconds": round(run.seconds, 3), "epochs": epochs,
                "weights_sha256": run.model.weights.get("sha256")}

    return train_fn


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
