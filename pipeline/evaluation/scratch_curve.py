"""The scratch side of the verdict (stage ``baseline``): a converged scratch run at every budget x seed of the
label-efficiency curve, and the scratch baseline's own run, side by side in one pool of worker processes.

It depends on the data, the architecture, the scratch recipe (``baseline``, ``train``) and the draws
(``curve``: budgets, seeds, val images per class, input size) only, so its DVC stage re-runs on those alone:
a change of selection, freezing or fine-tuning never retrains a scratch model.
Every draw is recorded with its run (the train ids, and the val ids that stopped the runs), and evaluate
learns the transfer side from exactly those images (pipeline/evaluation/comparison.py ``label_efficiency``).

One pool, not the baseline first and the curve after: on a CPU a run on two threads is only ~1.5x as fast as
on one (EfficientNet-Lite0 at 64 px, the 2-core development machine), so the baseline on one thread beside the
curve's runs on the other keeps both cores busy where the baseline alone on two left a third of them idle.

Shared with the baseline: a draw that is the whole label pool (a budget at or above every class's count,
as in a few-label run whose top budget is ``ingest.budget_per_class``), with the baseline's seed and input
size, is the scratch baseline's own run: its figures are taken from the baseline's metrics instead of
training it again. The baseline stopped on the whole val split, a superset of the curve's val images; a
better stopping signal can only help scratch, so sharing keeps the comparison conservative for transfer
(the row says ``shared_with: baseline`` and how many val images stopped it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from pipeline.config import BaselineParams
from pipeline.evaluation.scratch_baseline import BaselineJob, train_baseline
from pipeline.evaluation.label_efficiency import Draw, curve_draws, curve_row, drawable_budgets, sample_per_class
from pipeline.training.recipes import Setup, train_scratch
from pipeline.training.workers import run_in_workers, worker_plan

__all__ = ["ScratchJob", "ScratchSide", "scratch_run", "baseline_figures", "is_baseline_draw", "curve_val_ids",
           "scratch_side", "curve_metrics"]


@dataclass(frozen=True)
class ScratchJob:
    """One scratch run of the curve, as a worker process receives it."""

    setup: Setup
    cfg: BaselineParams
    seed: int
    train_ids: list[str]
    val_ids: list[str]
    majority: float  # the majority-class test accuracy: a run at or below it is a failed training


def scratch_run(job: ScratchJob) -> tuple[dict, float]:
    """Train one draw from scratch to convergence and score it on the test split; returns (figures, wall seconds)."""
    started = time.perf_counter()
    run = train_scratch(job.setup, job.cfg, job.seed, job.train_ids, job.val_ids)
    accuracy = round(run.test["accuracy"], 4)
    figures = {"accuracy": accuracy, "converged": run.fit.converged, "steps": run.fit.steps,
               "epochs": run.fit.phases[-1]["epochs"], "seconds": round(run.seconds, 3), "batch_size": run.batch_size,
               "classes_predicted": run.test["classes_predicted"], "val_images": len(job.val_ids),
               "threads": torch.get_num_threads(),
               "failed": run.test["classes_predicted"] <= 1 or accuracy <= job.majority}
    return figures, time.perf_counter() - started


def curve_val_ids(manifest: pd.DataFrame, per_class: int | None, seed: int) -> list[str]:
    """The val images that stop every curve run and pick every probe's penalty: ``per_class`` of each class."""
    val = manifest[manifest["split"] == "val"]
    return val["id"].to_numpy()[sample_per_class(val["label_idx"], per_class, seed)].tolist()


def baseline_figures(baseline: dict, majority: float) -> dict:
    """The baseline's run as the figures of the draw that is it (module docstring), from the baseline's metrics."""
    accuracy = round(baseline["test_accuracy"], 4)
    return {"accuracy": accuracy, "converged": baseline["converged"], "steps": baseline["optimizer_steps"],
            "epochs": baseline["epochs_run"], "seconds": baseline["train_seconds"],
            "batch_size": baseline["batch_size"], "classes_predicted": baseline["test_classes_predicted"],
            "val_images": baseline["val_images"], "threads": baseline.get("threads"), "shared_with": "baseline",
            "failed": baseline["test_classes_predicted"] <= 1 or accuracy <= majority}


def is_baseline_draw(draw: Draw, pool_size: int, image_size: int, baseline_seed: int, baseline_size: int) -> bool:
    """Whether a draw is the baseline's own run: the whole pool, at the baseline's seed and input size."""
    return len(draw.indices) == pool_size and draw.seed == baseline_seed and image_size == baseline_size


@dataclass
class ScratchSide:
    """What :func:`scratch_side` trained: the curve (scratch_runs.json) and the baseline's metrics."""

    curve: dict
    baseline: dict | None  # None where no baseline job was given


def _train_job(job: ScratchJob | BaselineJob) -> tuple[dict, float]:
    """One job of the pool (a module-level function: spawned workers import it by name)."""
    return train_baseline(job) if isinstance(job, BaselineJob) else scratch_run(job)


def scratch_side(setup: Setup, cfg: BaselineParams, pool_ids: Sequence[str], pool_labels: Sequence[int],
                 val_ids: Sequence[str], budgets: Sequence[int], seeds: Sequence[int], majority: float,
                 baseline: BaselineJob | None = None) -> ScratchSide:
    """The scratch runs of every drawable budget x seed, each draw recorded with its run, and the baseline's run in
    the same pool when given.

    The pool takes the longest runs first (the baseline, then the larger budgets: an epoch of theirs is more images),
    so that no core waits at the end on a long run started last. The baseline's worker runs it on the threads the
    other workers leave (on two threads, one each).

    Args:
        setup: what the curve runs share (architecture, input size, the ``train`` loop, device).
        cfg: the ``baseline`` params: the recipe every scratch run follows.
        pool_ids: the label pool (the train images inside the label budget), in manifest order.
        pool_labels: their label indices.
        val_ids: the val images that stop every curve run (and pick each probe's penalty in evaluate).
        budgets: k per class (those above the pool's smallest class are not drawn).
        seeds: seeds per budget.
        majority: the majority-class test accuracy.
        baseline: the baseline's job, trained in the same pool (a draw that is its run is not trained again;
            None: the curve alone).
    Returns:
        The curve: image_size, val_ids, pool_images, budgets, skipped, seeds, workers, threads_per_run and runs (one
        row per draw, :func:`pipeline.evaluation.label_efficiency.curve_row`, with its ``train_ids``); and the
        baseline's metrics.
    """
    pool_ids, pool_labels = list(pool_ids), np.asarray(pool_labels, dtype=int)
    drawn, skipped = drawable_budgets(pool_labels, budgets)
    draws = curve_draws(pool_labels, drawn, seeds)
    shared = {i for i, draw in enumerate(draws) if baseline is not None and is_baseline_draw(
        draw, len(pool_ids), setup.image_size, baseline.seed, baseline.setup.image_size)}
    trained = sorted((i for i in range(len(draws)) if i not in shared), key=lambda i: -draws[i].budget)
    jobs: list[ScratchJob | BaselineJob] = [
        ScratchJob(setup, cfg, draws[i].seed, [pool_ids[j] for j in draws[i].indices], list(val_ids), majority)
        for i in trained]
    names = [draws[i].name for i in trained]
    if baseline is not None:
        jobs.insert(0, baseline)
        names.insert(0, "baseline")
    workers, each = worker_plan(len(jobs), torch.get_num_threads(), setup.device)
    results = run_in_workers(_train_job, jobs, setup.device, names, first_takes_rest=baseline is not None)
    baseline_metrics = results.pop(0)[0] if baseline is not None else None
    by_draw = dict(zip(trained, results))
    rows = []
    for i, draw in enumerate(draws):
        figures, wall = (baseline_figures(baseline_metrics, majority), 0.0) if i in shared else by_draw[i]
        rows.append({**curve_row(draw, pool_labels, "scratch", figures, wall),
                     "train_ids": [pool_ids[j] for j in draw.indices]})
    curve = {"image_size": setup.image_size, "val_ids": list(val_ids), "pool_images": len(pool_ids),
             "budgets": drawn, "skipped": skipped, "seeds": list(seeds), "workers": workers, "threads_per_run": each,
             "runs": rows}
    return ScratchSide(curve, baseline_metrics)


def curve_metrics(curve: dict, wall_seconds: float) -> dict:
    """The curve's metrics: runs trained and shared, convergence, failures, seconds, workers (its metrics.json holds
    them under ``curve``: DVC and the run summary merge a stage's metrics files, and the baseline's are beside)."""
    runs = curve["runs"]
    return {"runs": len(runs), "trained": sum("shared_with" not in r for r in runs),
            "shared": sum("shared_with" in r for r in runs), "converged": all(r["converged"] for r in runs),
            "not_converged": [f"{r['name']} seed {r['seed']}" for r in runs if not r["converged"]],
            "failed": [f"{r['name']} seed {r['seed']}" for r in runs if r["failed"]],
            "train_seconds": round(sum(r["seconds"] for r in runs if "shared_with" not in r), 1),
            "wall_seconds": round(wall_seconds, 1), "workers": curve["workers"],
            "threads_per_run": curve["threads_per_run"], "budgets_skipped": curve["skipped"]}
