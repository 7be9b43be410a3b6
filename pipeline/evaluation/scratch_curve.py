"""The scratch side of the label-efficiency curve (stage ``curve``): a converged scratch run at every budget x
seed, side by side in worker processes.

It depends on the data, the architecture, the scratch recipe (``baseline``, ``train``) and the draws
(``curve``: budgets, seeds, val images per class, input size) only, so its own DVC stage
re-runs on those alone: a change of selection, freezing or fine-tuning never retrains a scratch model.
Every draw is recorded with its run (the train ids, and the val ids that stopped the runs), and evaluate
learns the transfer side from exactly those images (pipeline/evaluation/comparison.py ``label_efficiency``).

Shared with the baseline: a draw that is the whole label pool (a budget at or above every class's count,
as in a few-label run whose top budget is ``ingest.budget_per_class``), with the baseline's seed and input
size, is the scratch baseline's own run: its figures are taken from the baseline's metrics.json instead of
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
from pipeline.evaluation.label_efficiency import Draw, curve_draws, curve_row, drawable_budgets, sample_per_class
from pipeline.training.recipes import Setup, train_scratch
from pipeline.training.workers import run_in_workers, worker_plan

__all__ = ["ScratchJob", "scratch_run", "shared_run", "curve_val_ids", "scratch_curve"]


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


def shared_run(draw: Draw, pool_size: int, image_size: int, baseline: dict | None, majority: float) -> dict | None:
    """The baseline's run as this draw's scratch figures when they coincide (module docstring), else None.

    Args:
        draw: the curve's draw.
        pool_size: images in the label pool (the baseline's train set).
        image_size: the curve's input side.
        baseline: the baseline stage's metrics.json (None: no baseline to share).
        majority: the majority-class test accuracy.
    """
    if baseline is None or len(draw.indices) != pool_size or draw.seed != baseline.get("seed") \
            or image_size != baseline.get("image_size") or baseline.get("train_images") != pool_size:
        return None
    accuracy = round(baseline["test_accuracy"], 4)
    return {"accuracy": accuracy, "converged": baseline["converged"], "steps": baseline["optimizer_steps"],
            "epochs": baseline["epochs_run"], "seconds": baseline["train_seconds"],
            "batch_size": baseline["batch_size"], "classes_predicted": baseline["test_classes_predicted"],
            "val_images": baseline["val_images"], "threads": baseline.get("threads"), "shared_with": "baseline",
            "failed": baseline["test_classes_predicted"] <= 1 or accuracy <= majority}


def scratch_curve(setup: Setup, cfg: BaselineParams, pool_ids: Sequence[str], pool_labels: Sequence[int],
                  val_ids: Sequence[str], budgets: Sequence[int], seeds: Sequence[int], majority: float,
                  baseline: dict | None = None) -> dict:
    """The scratch runs of every drawable budget x seed, each draw recorded with its run.

    Args:
        setup: what the runs share (architecture, input size, the ``train`` loop, device).
        cfg: the ``baseline`` params: the recipe every scratch run follows.
        pool_ids: the label pool (the train images inside the label budget), in manifest order.
        pool_labels: their label indices.
        val_ids: the val images that stop every run (and pick each probe's penalty in evaluate).
        budgets: k per class (those above the pool's smallest class are not drawn).
        seeds: seeds per budget.
        majority: the majority-class test accuracy.
        baseline: the baseline stage's metrics.json, for the shared draw (None: train every draw).
    Returns:
        image_size, val_ids, pool_images, budgets, skipped, seeds, workers, threads_per_run and runs (one row
        per draw, :func:`pipeline.evaluation.label_efficiency.curve_row`, with its ``train_ids``).
    """
    pool_ids, pool_labels = list(pool_ids), np.asarray(pool_labels, dtype=int)
    drawn, skipped = drawable_budgets(pool_labels, budgets)
    draws = curve_draws(pool_labels, drawn, seeds)
    shared = {i: run for i, draw in enumerate(draws)
              if (run := shared_run(draw, len(pool_ids), setup.image_size, baseline, majority)) is not None}
    trained = [i for i in range(len(draws)) if i not in shared]
    jobs = [ScratchJob(setup, cfg, draws[i].seed, [pool_ids[j] for j in draws[i].indices], list(val_ids), majority)
            for i in trained]
    workers, threads = worker_plan(len(jobs), torch.get_num_threads(), setup.device)
    results = dict(zip(trained, run_in_workers(scratch_run, jobs, setup.device, [draws[i].name for i in trained])))
    rows = []
    for i, draw in enumerate(draws):
        figures, wall = (shared[i], 0.0) if i in shared else results[i]
        rows.append({**curve_row(draw, pool_labels, "scratch", figures, wall),
                     "train_ids": [pool_ids[j] for j in draw.indices]})
    return {"image_size": setup.image_size, "val_ids": list(val_ids), "pool_images": len(pool_ids), "budgets": drawn,
            "skipped": skipped, "seeds": list(seeds), "workers": workers, "threads_per_run": threads, "runs": rows}
