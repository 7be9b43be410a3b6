"""The scratch baseline's run: the architecture from random initialisation on every label of the pool, trained to
convergence and written as a model with its metrics, history, curves and DVCLive folder.

A job, not a stage: the baseline stage trains it in the same worker pool as the curve's scratch runs
(pipeline/evaluation/scratch_curve.py ``scratch_side``), so that the cores the runs leave idle one after the
other are used by the others. It writes its own outputs from the worker (the model stays there) and returns its
metrics, which the shared curve draw (the whole pool at the baseline's seed and input size) takes as its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipeline.common.logs import get_logger
from pipeline.config import BaselineParams
from pipeline.training.outputs import TrainingOutputs
from pipeline.training.recipes import Setup, train_scratch

__all__ = ["BaselineJob", "train_baseline"]
log = get_logger(__name__)


@dataclass(frozen=True)
class BaselineJob:
    """The baseline's run, as a worker process receives it."""

    setup: Setup  # its checkpoint folder lets a killed stage resume the run
    cfg: BaselineParams
    seed: int
    train_ids: list[str]  # the whole label pool
    val_images: int  # the val split's size (the whole split stops the run)
    outputs: TrainingOutputs
    card_params: dict  # the params the model card records (common, train, baseline)


def train_baseline(job: BaselineJob) -> tuple[dict, float]:
    """Train the baseline to convergence, write its outputs; returns (metrics, wall seconds)."""
    started = time.perf_counter()
    setup, cfg = job.setup, job.cfg
    log.info("scratch baseline %s on %d images: lr %g, patience %d, at most %d epochs, %d thread(s)",
             setup.model_name, len(job.train_ids), cfg.lr, cfg.patience, cfg.max_epochs, torch.get_num_threads())
    trained = train_scratch(setup, cfg, job.seed, job.train_ids, on_epoch=job.outputs.on_epoch())
    fit, outcome = trained.fit, trained.fit.phases[-1]
    metrics = {"converged": fit.converged, "stopped_by": outcome["stopped_by"], "epochs_run": outcome["epochs"],
               "max_epochs": cfg.max_epochs, "optimizer_steps": fit.steps, "batch_size": trained.batch_size,
               "best_epoch": fit.best["epoch"], "val_accuracy": fit.best["val_accuracy"],
               "val_loss": fit.best["val_loss"], "test_accuracy": trained.test["accuracy"],
               "test_loss": trained.test["loss"], "test_classes_predicted": trained.test["classes_predicted"],
               "train_seconds": round(trained.seconds, 2), "lr": cfg.lr, "seed": job.seed,
               "image_size": setup.image_size, "train_images": len(job.train_ids), "val_images": job.val_images,
               "threads": torch.get_num_threads(), "trainable_params": trained.plan.phases[0].trainable_params,
               "images_per_s": round(sum(r["images_per_s"] for r in fit.history) / len(fit.history), 1)}
    card = {"init": "random", "seed": job.seed, "freeze_plan": trained.plan.to_json(),
            "train_images": len(job.train_ids), "params": job.card_params}
    state = "converged" if fit.converged else "NOT converged"
    job.outputs.write(trained.model, card, metrics, fit.history, f"{setup.model_name} from scratch, {state} after "
                      f"{outcome['epochs']} epochs (best val acc {metrics['val_accuracy']:.3f}, test acc "
                      f"{metrics['test_accuracy']:.3f})")
    log.info("scratch %s: %s (%s) after %d steps, val acc %.4f, test acc %.4f in %.0fs", setup.model_name, state,
             outcome["stopped_by"], fit.steps, metrics["val_accuracy"], metrics["test_accuracy"], trained.seconds)
    return metrics, time.perf_counter() - started
