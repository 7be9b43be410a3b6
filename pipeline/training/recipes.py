"""One comparison run through the training engine: a linear probe on the pretrained backbone, or the same
architecture trained from scratch.

The scratch baseline and the label-efficiency curve train many models that differ only in their
initialisation (the selection's pretrained weights, or random), their train subset, their seed and
their plan. This module builds those plans with the freeze stage's own strategy builder and runs the
engine's loop; it holds no training loop of its own.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from pipeline.config import FinetuneParams, FreezeParams
from pipeline.freezing.blocks import block_param_counts
from pipeline.freezing.plan import FreezePlan, build_phases
from pipeline.models.catalog import get_spec
from pipeline.models.loaded import LoadedModel, weights_ref
from pipeline.training.data import training_data
from pipeline.training.loop import FitResult, Precision, RunContext, Trainer, evaluate

__all__ = ["Setup", "Trained", "steps_per_epoch", "epochs_for_steps", "comparison_plan", "new_model", "train_one"]


@dataclass
class Setup:
    """What every run of one comparison shares."""

    dataset: Path
    model_name: str
    classes: list[str]
    image_size: int
    cfg: FinetuneParams  # the fine-tune's loop settings (batch, optimizer, augmentation, ...)
    device: torch.device
    checkpoints: Path | None  # checkpoint folder of a kept run; None: throwaway runs write none
    num_workers: int = 0
    weights: dict[str, Any] = field(default_factory=dict)  # the selection's weights (uri, sha256): {} = the spec's
    hub_dir: str | os.PathLike | None = None


@dataclass
class Trained:
    """A finished run: the model (best validation weights), the engine's record and its cost."""

    model: LoadedModel
    fit: FitResult
    plan: FreezePlan
    seconds: float
    test: dict | None  # {"loss", "accuracy", "count"} on the test split, when asked for


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps of one epoch, as the engine's loader counts them (ragged tail dropped)."""
    return max(1, n_train // batch_size) if n_train > batch_size else 1


def epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs needed for at least ``steps`` optimizer steps on ``n_train`` images."""
    return max(1, math.ceil(steps / steps_per_epoch(n_train, batch_size)))


def comparison_plan(model_name: str, blocks: Sequence[str], block_params: Sequence[int], pretrained: bool,
                    epochs: int, lr: float, bn_policy: str) -> FreezePlan:
    """A one-phase plan: a linear probe on the pretrained backbone, or every block trained from scratch.

    Args:
        model_name: the catalog name.
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


def new_model(setup: Setup, pretrained: bool, seed: int) -> LoadedModel:
    """The run's starting model: the selection's pretrained weights, or a seeded random initialisation."""
    if pretrained:
        ref = weights_ref(setup.weights, get_spec(setup.model_name))
        return LoadedModel.pretrained(setup.model_name, len(setup.classes), setup.image_size, weights=ref,
                                      hub_dir=setup.hub_dir, seed=seed, classes=setup.classes)
    return LoadedModel.scratch(setup.model_name, len(setup.classes), setup.image_size, seed=seed,
                               classes=setup.classes)


def train_one(setup: Setup, plan: FreezePlan | None, pretrained: bool, seed: int,
              train_ids: Sequence[str], val_ids: Sequence[str] | None = None, epochs: int = 1,
              lr: float = 1e-3, score_test: bool = True) -> Trained:
    """Build the model (pretrained or random), train it with the engine, and score it on the test split.

    Args:
        setup: what the runs share.
        plan: the plan to follow, or None for :func:`comparison_plan` (``epochs``, ``lr``).
        pretrained: start from the selection's pretrained weights (False: seeded random initialisation).
        seed: seed of the initialisation, the data order and the augmentation.
        train_ids: the train images to use.
        val_ids: the val images that pick the best epoch (default: the whole val split).
        epochs: epochs of the comparison plan.
        lr: learning rate of the comparison plan.
        score_test: also evaluate on the test split.
    Returns:
        The trained model and its record.
    """
    model = new_model(setup, pretrained, seed)
    blocks = model.spec.blocks
    if plan is None:
        # a probe keeps the pretrained statistics (and can cache features); scratch must learn its own
        plan = comparison_plan(setup.model_name, blocks, block_param_counts(model.network, blocks), pretrained,
                               epochs, lr, "eval_all" if pretrained else "train")
    data = training_data(model.preprocessing, setup.dataset, train_ids, setup.cfg.augment, val_ids)
    ctx = RunContext(device=setup.device, seed=seed, ckpt_dir=setup.checkpoints, num_workers=setup.num_workers)
    started = time.perf_counter()
    fit = Trainer(model.network, plan, data, setup.cfg, ctx).fit()
    seconds = time.perf_counter() - started
    model.to(setup.device)
    test = None
    if score_test:
        loader = DataLoader(model.inputs(setup.dataset, "test"), batch_size=setup.cfg.eval_batch_size,
                            num_workers=setup.num_workers)
        test = evaluate(model.network, loader, setup.device, Precision.choose(setup.device, setup.cfg))
    return Trained(model, fit, plan, seconds, test)
