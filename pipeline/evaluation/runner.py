"""Training one model for a comparison, through the fine-tuning engine (pipeline.training.Trainer).

The baseline stage and the label-efficiency curve train many models that differ only in their
initialisation (pretrained or random), their train subset, their seed and their plan. This module
builds those plans from the engine's own strategy builder and runs the engine's loop; it holds no
training loop of its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import FinetuneParams, FreezeParams
from pipeline.data.shards import ShardImageDataset
from pipeline.evaluation.label_efficiency import TrainFn
from pipeline.training.augment import eval_transform, resolve_augment, train_transform
from pipeline.training.freezing import block_param_counts
from pipeline.training.loop import FitResult, Precision, RunContext, TrainData, Trainer, evaluate
from pipeline.training.plan import FreezePlan, build_phases
from pipeline.zoo import create_model, get_spec

__all__ = ["Setup", "Trained", "steps_per_epoch", "epochs_for_steps", "comparison_plan", "train_one",
           "elapsed_curve", "curve_train_fn"]


@dataclass
class Setup:
    """What every run of one comparison shares."""

    dataset: Path
    model_name: str
    num_classes: int
    image_size: int
    cfg: FinetuneParams  # the fine-tune's loop settings (batch, optimizer, augmentation, ...)
    device: torch.device
    checkpoints: Path | None  # checkpoint folder of a kept run; None: throwaway runs write none
    num_workers: int = 0


@dataclass
class Trained:
    """A finished run: the model (best validation weights), the engine's record and its cost."""

    model: nn.Module
    fit: FitResult
    plan: FreezePlan
    seconds: float
    test: dict | None  # {"loss", "accuracy", "count"} on the test split, when asked for


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps of one epoch, as the engine's loader counts them (ragged tail dropped)."""
    return max(1, n_train // batch_size) if n_train > batch_size else 1


def comparison_plan(model_name: str, blocks: Sequence[str], block_params: Sequence[int], pretrained: bool,
                    epochs: int, lr: float, bn_policy: str) -> FreezePlan:
    """A one-phase plan: a linear probe on the pretrained backbone, or every block trained from scratch.

    Args:
        model_name: the zoo name.
        blocks: ordered block names, head last.
        block_params: parameters per block.
        pretrained: True for the linear probe (all but the head frozen), False for scratch (nothing frozen).
        epochs: epochs of the phase.
        lr: its learning rate (one for every block).
        bn_policy: BatchNorm policy (scratch needs ``train``: its statistics start from nothing).
    Returns:
        The plan.
    """
    cfg = FreezeParams(epochs=epochs, lp_epochs=epochs, lr=lr, lp_lr=lr, layer_decay=1.0)
    strategy = "linear_probe" if pretrained else "full"
    phases = build_phases(strategy, len(blocks) - 1 if pretrained else 0, cfg, blocks, block_params)
    why = [f"comparison run: {strategy} for {epochs} epochs at lr {lr:g}"]
    return FreezePlan(model=model_name, strategy=strategy, requested="comparison", blocks=list(blocks),
                      bn_policy=bn_policy, phases=phases, block_params=list(block_params), why=why)


def _data(setup: Setup, train_ids: Sequence[str] | None, val_ids: Sequence[str] | None, mean, std) -> TrainData:
    augment = resolve_augment(setup.cfg.augment, setup.image_size)
    plain = eval_transform(setup.image_size, mean, std)
    return TrainData(
        train=ShardImageDataset(setup.dataset, "train", train_transform(augment, setup.image_size, mean, std),
                                ids=train_ids),
        train_plain=ShardImageDataset(setup.dataset, "train", plain, ids=train_ids),
        val=ShardImageDataset(setup.dataset, "val", plain, ids=val_ids), augmented=augment != "none")


def train_one(setup: Setup, plan: FreezePlan | None, pretrained: bool, seed: int,
              train_ids: Sequence[str] | None = None, val_ids: Sequence[str] | None = None, epochs: int = 1,
              lr: float = 1e-3, score_test: bool = True) -> Trained:
    """Build the model (pretrained or random), train it with the engine, and score it on the test split.

    Args:
        setup: what the runs share.
        plan: the plan to follow, or None for :func:`comparison_plan` (``epochs``, ``lr``).
        pretrained: load the zoo's pretrained weights (False: seeded random initialisation).
        seed: seed of the initialisation, the data order and the augmentation.
        train_ids: the train images to use (default: the whole train split).
        val_ids: the val images that pick the best epoch (default: the whole val split).
        epochs: epochs of the comparison plan.
        lr: learning rate of the comparison plan.
        score_test: also evaluate on the test split.
    Returns:
        The trained model and its record.
    """
    spec = get_spec(setup.model_name)
    model = create_model(setup.model_name, setup.num_classes, pretrained=pretrained, seed=seed)
    if plan is None:
        # a probe keeps the pretrained statistics (and can cache features); scratch must learn its own
        plan = comparison_plan(setup.model_name, spec.blocks, block_param_counts(model, spec.blocks), pretrained,
                               epochs, lr, "eval_all" if pretrained else "train")
    data = _data(setup, train_ids, val_ids, spec.mean, spec.std)
    ctx = RunContext(device=setup.device, seed=seed, ckpt_dir=setup.checkpoints, num_workers=setup.num_workers)
    started = time.perf_counter()
    fit = Trainer(model, plan, data, setup.cfg, ctx).fit()
    seconds = time.perf_counter() - started
    test = None
    if score_test:
        loader = DataLoader(ShardImageDataset(setup.dataset, "test", data.train_plain.transform),
                            batch_size=setup.cfg.eval_batch_size, num_workers=setup.num_workers)
        test = evaluate(model, loader, setup.device, Precision.choose(setup.device, setup.cfg))
    return Trained(model, fit, plan, seconds, test)


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


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs needed for at least ``steps`` optimizer steps on ``n_train`` images."""
    return max(1, math.ceil(steps / steps_per_epoch(n_train, batch_size)))


def curve_train_fn(setup: Setup, train_ids: Sequence[str], val_ids: Sequence[str] | None, steps: int,
                   probe_lr: float, scratch_lr: float, transfer_plan: FreezePlan | None = None) -> TrainFn:
    """The ``train_fn`` of the label-efficiency curve: one engine run per (subset, seed, side).

    Both sides train on the same subset for the same number of optimizer steps: ``steps`` (linear
    probe vs scratch), or the transfer plan's planned epochs when a plan is given.

    Args:
        setup: what the runs share (image size of the curve included).
        train_ids: the train pool; the curve's indices point into it.
        val_ids: val images picking each run's best epoch.
        steps: optimizer steps per run (without a transfer plan).
        probe_lr: learning rate of the linear probe.
        scratch_lr: learning rate of scratch.
        transfer_plan: replay this freeze plan on the transfer side instead of a linear probe.
    Returns:
        ``train_fn(indices, seed, pretrained) -> {"accuracy", "train_seconds", "epochs"}``.
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
        run = train_one(throwaway, plan, pretrained, seed, ids, val_ids, epochs,
                        probe_lr if pretrained else scratch_lr)
        return {"accuracy": run.test["accuracy"], "train_seconds": round(run.seconds, 3), "epochs": epochs}

    return train_fn
