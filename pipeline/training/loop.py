"""The fine-tuning engine: trains a model through the phases of a freeze plan.

Per phase: ``freeze_to`` the planned depth, one optimizer group per trainable block at its planned
learning rate (AdamW or Nesterov SGD), linear warmup then cosine, label smoothing, gradient clipping,
early stopping on validation accuracy. Head-only phases train on cached backbone features
(pipeline.training.featcache). CUDA gets autocast (bf16 where supported, else fp16 with a grad
scaler), channels_last and pinned memory; the CPU may use bf16 autocast. Under torchrun the trained
module is wrapped in DDP. A checkpoint is written atomically after every epoch; ``resume`` continues
from it and, since every epoch reseeds from (seed, phase, epoch), reaches the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.common.logs import get_logger, progress
from pipeline.common.seeding import seed_everything
from pipeline.config import FinetuneParams
from pipeline.models.inference import run_batches
from pipeline.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from pipeline.training.data import TrainData
from pipeline.training.ddp import DistInfo, all_reduce_sum, wrap_ddp
from pipeline.training.featcache import CachedHead, FeatureViews, as_batch, cache_views, supports_cache
from pipeline.freezing.blocks import freeze_to, param_groups, set_train_mode
from pipeline.freezing.plan import FreezePlan, Phase

__all__ = ["RunContext", "Precision", "FitResult", "Trainer", "evaluate", "warmup_cosine"]
log = get_logger(__name__)


@dataclass
class RunContext:
    """Where and how a run executes (not part of the params: device, paths, process rank)."""

    device: torch.device
    seed: int
    ckpt_dir: Path | None  # None: no checkpoints (throwaway comparison runs that never resume)
    num_workers: int = 0
    resume: bool = False
    dist: DistInfo = field(default_factory=DistInfo)
    on_step: Callable[[int], None] | None = None  # called after each optimizer step (progress hooks, tests)


@dataclass(frozen=True)
class Precision:
    """Autocast dtype and whether a grad scaler is needed (fp16 only)."""

    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def choose(cls, device: torch.device, cfg: FinetuneParams) -> "Precision":
        """bf16 on CUDA where supported (else fp16), optional bf16 on the CPU, else full precision."""
        if device.type == "cuda" and cfg.amp:
            return cls("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if device.type == "cpu" and cfg.cpu_bf16:
            return cls("cpu", torch.bfloat16)
        return cls(device.type, None)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op in full precision)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 (bf16 and fp32 have the range to need none)."""
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None


@dataclass
class FitResult:
    """What a run produced besides the trained model."""

    history: list[dict[str, Any]]
    best: dict[str, Any]
    cache_modes: list[str]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's lr over ``warmup_steps``, then cosine to 0 at ``total_steps``."""
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate(module: nn.Module, loader: DataLoader, device: torch.device, precision: Precision) -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and accuracy of a module over a loader.

    Args:
        module: maps a batch of inputs to logits (eval mode is set here).
        loader: yields (inputs, labels).
        device: where the module is.
        precision: autocast settings.
    Returns:
        {"loss", "accuracy", "count"}.
    """
    out = run_batches(module, lambda inputs: {"logits": module(inputs)}, loader, device,
                      autocast=precision.autocast, desc="validation", show_progress=False)
    logits, labels = out["logits"], out.labels
    return {"loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(1) == labels).float().mean().item(), "count": len(labels)}


class Trainer:
    """Runs a freeze plan on a model: ``Trainer(...).fit()`` trains it and loads the best weights."""

    def __init__(self, model: nn.Module, plan: FreezePlan, data: TrainData, cfg: FinetuneParams, ctx: RunContext):
        self.model, self.plan, self.data, self.cfg, self.ctx = model, plan, data, cfg, ctx
        self.device = ctx.device
        self.precision = Precision.choose(ctx.device, cfg)
        self.channels_last = ctx.device.type == "cuda" and cfg.channels_last
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.cache_modes = [self._cache_mode(phase) for phase in plan.phases]
        self.fingerprint = fingerprint(plan.to_json(), cfg.model_dump(), ctx.seed, len(data.train),
                                       len(data.val), ctx.dist.world_size)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer: torch.optim.Optimizer | None = None  # the current phase's

    def fit(self) -> FitResult:
        """Train through every phase (resuming when asked), then load the best weights into the model."""
        if self.ctx.resume and self.ctx.ckpt_dir is None:
            raise ValueError("resume needs a checkpoint directory")
        state = load_checkpoint(self.ctx.ckpt_dir, self.fingerprint) if self.ctx.resume else None
        start = (0, 0)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.history, self.best, self.best_state = state["history"], state["best"], state["best_state"]
            start = (state["phase"], state["epoch"])
            log.info("resuming at phase %d epoch %d from %s", start[0] + 1, start[1] + 1, self.ctx.ckpt_dir)
        for index, phase in enumerate(self.plan.phases):
            if index >= start[0]:
                self._run_phase(index, phase, state if index == start[0] and start[1] > 0 else None)
        if self.best_state:
            self.model.load_state_dict(self.best_state)
        return FitResult(self.history, self.best, self.cache_modes)

    # --- one phase -------------------------------------------------------------------------------
    def _run_phase(self, index: int, phase: Phase, state: dict[str, Any] | None) -> None:
        freeze_to(self.model, self.plan.blocks, phase.n_frozen)
        cached = self.cache_modes[index]
        train_ds, val_ds, module = self._phase_data(index, cached)
        loader, sampler = self._train_loader(train_ds)
        val_loader = self._loader(val_ds, self.cfg.eval_batch_size)
        trained = self._wrap(module)
        self.optimizer = optimizer = self._optimizer(phase)  # kept for on_step hooks
        schedule = warmup_cosine(optimizer, phase.epochs * len(loader), round(self.cfg.warmup_epochs * len(loader)))
        scaler = self.precision.scaler()
        since_best, first = 0, 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            since_best, first = state["since_best"], state["epoch"]
        log.info("phase %d/%d %s: %d frozen blocks, %d trainable params, features %s", index + 1,
                 len(self.plan.phases), phase.name, phase.n_frozen, phase.trainable_params, cached)
        for epoch in range(first, phase.epochs):
            seed_everything(self.ctx.seed * 1_000_003 + index * 1009 + epoch)
            sampler.set_epoch(epoch)
            if isinstance(train_ds, FeatureViews):
                train_ds.set_epoch(epoch)
            train = self._train_epoch(trained, module, loader, optimizer, schedule, scaler, phase,
                                      f"{phase.name} epoch {epoch + 1}/{phase.epochs}")
            val = evaluate(module, val_loader, self.device, self.precision)
            since_best = 0 if self._record(index, phase, train, val, optimizer) else since_best + 1
            stop = self.cfg.patience > 0 and since_best >= self.cfg.patience
            done = stop or epoch + 1 == phase.epochs
            self._checkpoint((index + 1, 0) if done else (index, epoch + 1), optimizer, schedule, scaler, since_best)
            if stop:
                log.info("early stop in %s after %d epochs without a better val accuracy", phase.name, since_best)
                break

    def _cache_mode(self, phase: Phase) -> str:
        """'off', 'features' (one clean pass) or 'views:K' (K augmented passes) for this phase."""
        if not (self.cfg.feature_cache and phase.cacheable and supports_cache(self.model)
                and self.plan.bn_policy != "train"):
            return "off"
        if self.data.augmented and self.cfg.cache_views > 0:
            return f"views:{self.cfg.cache_views}"
        return "features"

    def _phase_data(self, index: int, cached: str) -> tuple[Dataset, Dataset, nn.Module]:
        """(train set, val set, module mapping their inputs to logits) for the phase's cache mode."""
        if cached == "off":
            return self.data.train, self.data.val, self.model
        views = 1 if cached == "features" else self.cfg.cache_views
        source = self.data.train_plain if cached == "features" else self.data.train
        seed = self.ctx.seed * 1_000_003 + index * 1009
        batch = self.cfg.eval_batch_size
        train = cache_views(self.model, lambda: self._loader(source, batch), views, seed, self.device,
                            self.precision.autocast)
        val = cache_views(self.model, lambda: self._loader(self.data.val, batch), 1, seed, self.device,
                          self.precision.autocast)
        return train, val, CachedHead(self.model)

    # --- building blocks -------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch: int, sampler: DistributedSampler | None = None,
                drop_last: bool = False) -> DataLoader:
        if isinstance(dataset, FeatureViews):  # in-memory tensors: no workers, one indexing op per batch
            return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=drop_last, collate_fn=as_batch,
                              pin_memory=self.device.type == "cuda")
        return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=self.ctx.num_workers,
                          drop_last=drop_last, pin_memory=self.device.type == "cuda")

    def _train_loader(self, dataset: Dataset) -> tuple[DataLoader, DistributedSampler]:
        """Shuffled per epoch (seed + epoch) and split across ranks; the global batch stays batch_size."""
        dist = self.ctx.dist
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                     seed=self.ctx.seed)
        batch = max(1, self.cfg.batch_size // dist.world_size)
        # a last batch of one image would break BatchNorm in train mode: drop the ragged tail
        return self._loader(dataset, batch, sampler, drop_last=len(sampler) > batch), sampler

    def _wrap(self, module: nn.Module) -> nn.Module:
        module = wrap_ddp(module, self.ctx.dist, self.device)
        return torch.compile(module) if self.cfg.compile else module

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        groups = param_groups(self.model, self.plan.blocks, phase.lrs, self.cfg.weight_decay)
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=self.cfg.momentum, nesterov=True)
        return torch.optim.AdamW(groups, lr=groups[0]["lr"])

    def _train_epoch(self, trained: nn.Module, module: nn.Module, loader: DataLoader,
                     optimizer: torch.optim.Optimizer, schedule: Any, scaler: Any, phase: Phase,
                     desc: str) -> dict[str, float]:
        if isinstance(module, CachedHead):
            trained.train()
        else:
            set_train_mode(self.model, self.plan.blocks, phase.n_frozen, self.plan.bn_policy)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        totals = torch.zeros(3, device=self.device)  # loss sum, correct, count: one sync per epoch
        batches = progress(loader, desc, unit="batch") if self.ctx.dist.is_main else loader
        started = time.perf_counter()
        for inputs, labels in batches:
            inputs, labels = self._to_device(inputs), labels.to(self.device, non_blocking=True)
            with self.precision.autocast():
                logits = trained(inputs)
                loss = self.criterion(logits.float(), labels)
            self._step(loss, optimizer, scaler, params)
            schedule.step()
            with torch.no_grad():
                totals += torch.stack([loss.detach() * labels.numel(), (logits.argmax(1) == labels).sum().float(),
                                       torch.tensor(float(labels.numel()), device=self.device)])
            if self.ctx.on_step is not None:
                self.ctx.on_step(schedule.last_epoch)
        seconds = time.perf_counter() - started
        loss_sum, correct, count = all_reduce_sum(totals, self.ctx.dist).tolist()
        return {"loss": loss_sum / count, "accuracy": correct / count, "seconds": seconds,
                "images_per_s": count / seconds}

    def _to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any, params: list) -> None:
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            optimizer.step()
            return
        scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    # --- bookkeeping -----------------------------------------------------------------------------
    def _record(self, index: int, phase: Phase, train: dict, val: dict, optimizer: torch.optim.Optimizer) -> bool:
        """Append the epoch to the history; returns whether it is the best so far (val acc, then loss)."""
        row = {"epoch": len(self.history) + 1, "phase": phase.name, "phase_index": index,
               "train_loss": train["loss"], "train_accuracy": train["accuracy"], "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "head_lr": optimizer.param_groups[-1]["lr"],
               "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
        self.history.append(row)
        log.info("epoch %d (%s): train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s", row["epoch"],
                 phase.name, train["loss"], train["accuracy"], val["loss"], val["accuracy"], train["images_per_s"])
        key = (val["accuracy"], -val["loss"])
        if self.best and key <= (self.best["val_accuracy"], -self.best["val_loss"]):
            return False
        self.best = {"epoch": row["epoch"], "phase": phase.name, "val_accuracy": val["accuracy"],
                     "val_loss": val["loss"]}
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return True

    def _checkpoint(self, position: tuple[int, int], optimizer: torch.optim.Optimizer, schedule: Any,
                    scaler: Any, since_best: int) -> None:
        if not self.ctx.dist.is_main or self.ctx.ckpt_dir is None:
            return
        save_checkpoint(self.ctx.ckpt_dir, {
            "fingerprint": self.fingerprint, "phase": position[0], "epoch": position[1],
            "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler is not None else {},
            "since_best": since_best, "history": self.history, "best": self.best, "best_state": self.best_state})
