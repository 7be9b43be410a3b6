"""From-scratch training to convergence: the scratch baseline stage and the scratch side of the
label-efficiency curve are the same recipe.

The same architecture starts from a seeded random initialisation and trains every block through the
engine's loop (the fine-tune's optimizer, augmentation, schedule shape and clipping) at its own
learning rate, with BatchNorm learning its statistics, until the stopping rule ends it: ``patience``
epochs without a better val accuracy, or the ``max_epochs`` cap, which a run still improving reports
as not converged. A small train set is repeated within an epoch so that one epoch is at least
``train.min_epoch_steps`` optimizer steps, so that the patience window is never shorter than
``patience x min_epoch_steps`` steps (with 20 images, a 50-step window stopped scratch at 0.44 test
accuracy where a 100-step one let it reach 0.86), and its batch is at most a quarter of it
(pipeline.training.data.small_data_batch), so that every run takes several steps per pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader

from pipeline.common.processes import resume_requested
from pipeline.config import BaselineParams, FreezeParams, TrainParams
from pipeline.freezing.blocks import block_param_counts
from pipeline.freezing.plan import FreezePlan, build_phases
from pipeline.models.loaded import LoadedModel
from pipeline.training.data import small_data_batch, training_data
from pipeline.training.loop import FitResult, Precision, RunContext, Trainer, evaluate

__all__ = ["Setup", "Trained", "scratch_plan", "train_scratch"]


@dataclass
class Setup:
    """What every scratch run of one comparison shares."""

    dataset: os.PathLike  # the dataset directory, or the stage's GatedDataset (its quarantine left out)
    model_name: str
    classes: list[str]
    image_size: int
    cfg: TrainParams  # the loop the fine-tune runs too (optimizer, augmentation, clipping, ...)
    device: torch.device
    checkpoints: Path | None  # checkpoint folder of a kept run; None: throwaway runs write none
    num_workers: int = 0


@dataclass
class Trained:
    """A finished run: the model (best validation weights), the engine's record and its cost."""

    model: LoadedModel
    fit: FitResult
    plan: FreezePlan
    seconds: float
    batch_size: int
    test: dict | None  # {"loss", "accuracy", "count", "classes_predicted"} on the test split, when asked for


def scratch_plan(model_name: str, blocks: Sequence[str], block_params: Sequence[int], epochs: int,
                 lr: float) -> FreezePlan:
    """One phase training every block from scratch at one learning rate, BatchNorm learning its statistics."""
    cfg = FreezeParams(epochs=epochs, lr=lr, layer_decay=1.0)
    phases = build_phases("full", 0, cfg, blocks, block_params)
    why = [f"from scratch: every block at lr {lr:g}, at most {epochs} epochs, early stopping on val"]
    return FreezePlan(model=model_name, strategy="full", requested="scratch", blocks=list(blocks),
                      bn_policy="train", phases=phases, block_params=list(block_params), why=why)


def train_scratch(setup: Setup, cfg: BaselineParams, seed: int, train_ids: Sequence[str],
                  val_ids: Sequence[str] | None = None, score_test: bool = True,
                  on_epoch: Callable[[list[dict[str, Any]]], None] | None = None) -> Trained:
    """Train the architecture from a seeded random start to convergence and score it on the test split.

    Args:
        setup: what the runs share.
        cfg: the ``baseline`` params (lr, patience, cap).
        seed: seed of the initialisation, the data order and the augmentation.
        train_ids: the train images.
        val_ids: the val images that stop the run and pick its best epoch (default: the whole val split).
        score_test: also evaluate on the test split.
        on_epoch: receives the history after each epoch (the baseline stage's DVCLive folder).
    Returns:
        The trained model and its record (``fit.converged``, ``fit.steps``).
    """
    model = LoadedModel.scratch(setup.model_name, len(setup.classes), setup.image_size, seed=seed,
                                classes=setup.classes)
    batch = small_data_batch(len(train_ids), setup.cfg.batch_size)
    loop = setup.cfg.model_copy(update={"batch_size": batch})
    blocks = model.spec.blocks
    plan = scratch_plan(setup.model_name, blocks, block_param_counts(model.network, blocks), cfg.max_epochs, cfg.lr)
    data = training_data(model.preprocessing, setup.dataset, train_ids, loop.augment, val_ids,
                         loop.min_epoch_steps * batch)
    ctx = RunContext(device=setup.device, seed=seed, ckpt_dir=setup.checkpoints, num_workers=setup.num_workers,
                     resume=setup.checkpoints is not None and resume_requested(), on_epoch=on_epoch)
    started = time.perf_counter()
    fit = Trainer(model.network, plan, data, loop, ctx, patience=cfg.patience).fit()
    seconds = time.perf_counter() - started
    model.to(setup.device)
    test = None
    if score_test:
        loader = DataLoader(model.inputs(setup.dataset, "test"), batch_size=loop.eval_batch_size,
                            num_workers=setup.num_workers)
        test = evaluate(model.network, loader, setup.device, Precision.choose(setup.device, loop))
    return Trained(model, fit, plan, seconds, batch, test)
