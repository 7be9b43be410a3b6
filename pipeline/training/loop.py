"""The training engine: trains a model through the phases of a freeze plan.

The linear-probe phase is solved, not trained: the frozen backbone's features are computed once and
the head is the optimum of a logistic regression whose penalty is chosen on val
(pipeline.training.probe). Every other phase: ``freeze_to`` the planned depth, one optimizer group per
trainable block at its planned learning rate (AdamW or Nesterov SGD), linear warmup then cosine,
label smoothing, gradient clipping, early stopping on validation accuracy; head-only phases train on
cached backbone features (pipeline.training.frozen_features). The best val epoch over all phases is kept, so
a fine-tune phase replaces the probe only when it beats it on val.

The stopping rule (docs/finetune.md): a phase stops after ``patience`` epochs without a better val
accuracy than its own best so far (a fine-tune phase that starts below the probe is not cut off for
that), or at its planned epochs (the cap). A run is *converged* when its last phase stopped that
way, or reached the cap with no better val accuracy in its last ``patience`` epochs; a run that hit the
cap while val accuracy was still rising is not, and says so (``FitResult.converged``).

CUDA gets autocast (bf16 where supported, else fp16 with a grad scaler) and pinned memory; the CPU
may use bf16 autocast; both train in the channels_last layout. Under torchrun the trained module is wrapped in DDP. A
checkpoint is written atomically after every epoch; ``resume`` continues from it and, since every
epoch reseeds from (seed, phase, epoch), reaches the same numbers.
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

from pipeline.common.device import memory_format
from pipeline.common.logs import get_logger, progress
from pipeline.common.seeding import seed_everything
from pipeline.config import TrainParams
from pipeline.models.inference import run_batches
from pipeline.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from pipeline.training.data import TrainData
from pipeline.training.ddp import DistInfo, all_reduce_sum, wrap_ddp
from pipeline.training.frozen_features import CachedHead, FeatureViews, as_batch, cache_views, supports_cache
from pipeline.training.probe import fit_linear_probe, scale_to_loss, set_head
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
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None  # the whole history after each epoch (main
    # process only): experiment tracking (pipeline/training/tracking.py)


@dataclass(frozen=True)
class Precision:
    """Autocast dtype and whether a grad scaler is needed (fp16 only)."""

    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def choose(cls, device: torch.device, cfg: TrainParams) -> "Precision":
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
    phases: list[dict[str, Any]] = field(default_factory=list)  # per phase: epochs, steps, stopped_by, since_best

    @property
    def steps(self) -> int:
        """Optimizer steps taken (a solved probe counts none)."""
        return int(sum(row.get("steps", 0) for row in self.history))

    @property
    def converged(self) -> bool:
        """The last phase stopped on its own, or hit its cap with val accuracy no longer rising."""
        return bool(self.phases) and self.phases[-1]["converged"]


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
        {"loss", "accuracy", "count", "classes_predicted"} (how many classes the module ever predicts:
        1 for a collapsed model).
    """
    out = run_batches(module, lambda inputs: {"logits": module(inputs)}, loader, device,
                      autocast=precision.autocast, desc="validation", show_progress=False)
    logits, labels = out["logits"], out.labels
    predicted = logits.argmax(1)
    return {"loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (predicted == labels).float().mean().item(), "count": len(labels),
            "classes_predicted": int(predicted.unique().numel())}


class Trainer:
    """Runs a freeze plan on a model: ``Trainer(...).fit()`` trains it and loads the best weights.

    ``cfg`` is the loop (the ``train`` section); the run's own stopping rule (``patience``: ``finetune.patience``
    or ``baseline.patience``) and head-only caching (``finetune.feature_cache``, ``cache_views``) come beside it.
    """

    def __init__(self, model: nn.Module, plan: FreezePlan, data: TrainData, cfg: TrainParams, ctx: RunContext, *,
                 patience: int, feature_cache: bool = False, cache_views: int = 0):
        self.model, self.plan, self.data, self.cfg, self.ctx = model, plan, data, cfg, ctx
        self.patience, self.feature_cache, self.cache_views = patience, feature_cache, cache_views
        self.device = ctx.device
        self.precision = Precision.choose(ctx.device, cfg)
        self.memory_format = memory_format(ctx.device, cfg.channels_last)
        self.model.to(self.device, memory_format=self.memory_format)
        self.history: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []  # per finished phase
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.cache_modes = [self._cache_mode(phase) for phase in plan.phases]
        settings = cfg.model_dump() | {"patience": patience, "feature_cache": feature_cache, "cache_views": cache_views}
        self.fingerprint = fingerprint(plan.to_json(), settings, ctx.seed, len(data.train), len(data.val),
                                       ctx.dist.world_size)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer: torch.optim.Optimizer | None = None  # the current phase's
        self.phase_best: tuple[float, float] | None = None  # the current phase's best (val accuracy, -val loss)

    def fit(self) -> FitResult:
        """Train through every phase (resuming when asked), then load the best weights into the model."""
        if self.ctx.resume and self.ctx.ckpt_dir is None:
            raise ValueError("resume needs a checkpoint directory")
        state = load_checkpoint(self.ctx.ckpt_dir, self.fingerprint) if self.ctx.resume else None
        start = (0, 0)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.history, self.best, self.best_state = state["history"], state["best"], state["best_state"]
            self.outcomes = state.get("outcomes", [])
            start = (state["phase"], state["epoch"])
            log.info("resuming at phase %d epoch %d from %s", start[0] + 1, start[1] + 1, self.ctx.ckpt_dir)
        for index, phase in enumerate(self.plan.phases):
            if index >= start[0]:
                self._run_phase(index, phase, state if index == start[0] and start[1] > 0 else None)
        if self.best_state:
            self.model.load_state_dict(self.best_state)
        return FitResult(self.history, self.best, self.cache_modes, self.outcomes)

    # --- one phase -------------------------------------------------------------------------------
    def _run_phase(self, index: int, phase: Phase, state: dict[str, Any] | None) -> None:
        freeze_to(self.model, self.plan.blocks, phase.n_frozen)
        if phase.probe_cs:
            self._solve_probe(index, phase)
            return
        cached = self.cache_modes[index]
        train_ds, val_ds, module = self._phase_data(index, cached)
        loader, sampler = self._train_loader(train_ds)
        val_loader = self._loader(val_ds, self.cfg.eval_batch_size)
        trained = self._wrap(module)
        self.optimizer = optimizer = self._optimizer(phase)  # kept for on_step hooks
        schedule = warmup_cosine(optimizer, phase.epochs * len(loader), round(self.cfg.warmup_epochs * len(loader)))
        scaler = self.precision.scaler()
        since_best, first, self.phase_best = 0, 0, None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            since_best, first, self.phase_best = state["since_best"], state["epoch"], state.get("phase_best")
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
            self._record(index, phase, train, val, optimizer.param_groups[-1]["lr"])
            key = (val["accuracy"], -val["loss"])
            improved = self.phase_best is None or key > tuple(self.phase_best)
            self.phase_best = key if improved else self.phase_best
            since_best = 0 if improved else since_best + 1
            stop = self.patience > 0 and since_best >= self.patience
            done = stop or epoch + 1 == phase.epochs
            if done:
                self._finish_phase(phase, epoch + 1, "patience" if stop else "cap", since_best)
            self._checkpoint((index + 1, 0) if done else (index, epoch + 1), optimizer, schedule, scaler, since_best)
            if stop:
                log.info("early stop in %s after %d epochs without a better val accuracy", phase.name, since_best)
                break

    def _finish_phase(self, phase: Phase, epochs: int, stopped_by: str, since_best: int, **details: Any) -> None:
        converged = stopped_by in ("patience", "solved") or (self.patience > 0 and since_best >= self.patience)
        self.outcomes.append({"phase": phase.name, "epochs": epochs, "stopped_by": stopped_by,
                              "since_best": since_best, "converged": converged,
                              "steps": int(sum(r["steps"] for r in self.history if r["phase"] == phase.name)),
                              **details})
        if not converged:
            log.warning("%s reached its cap of %d epochs while val accuracy was still rising (best %d epoch(s) "
                        "ago): not converged", phase.name, epochs, since_best)

    def _solve_probe(self, index: int, phase: Phase) -> None:
        """The probe phase: the head is the optimum of a val-tuned logistic regression on frozen features."""
        seed, batch = self.ctx.seed * 1_000_003 + index * 1009, self.cfg.eval_batch_size
        started = time.perf_counter()
        train, val = (cache_views(self.model, lambda ds=ds: self._loader(ds, batch), 1, seed, self.device,
                                  self.precision.autocast) for ds in (self.data.train_plain, self.data.val))
        arrays = (train.views[0].numpy(), train.labels.numpy(), val.views[0].numpy(), val.labels.numpy())
        fit = fit_linear_probe(*arrays, self.model.get_classifier().out_features, phase.probe_cs)
        # a later phase fine-tunes from this head under its own (smoothed) loss: start it at that loss's minimum
        fit = scale_to_loss(fit, *arrays, self.cfg.label_smoothing)
        set_head(self.model, fit)
        head = CachedHead(self.model)
        scores = [evaluate(head, self._loader(views, batch), self.device, self.precision) for views in (train, val)]
        seconds = time.perf_counter() - started
        train_scores = {**scores[0], "seconds": seconds, "images_per_s": len(train) / seconds, "steps": 0}
        log.info("linear probe solved: C = %g (val accuracy over C: %s), %d L-BFGS iterations, head scaled by %.3g",
                 fit.c, ", ".join(f"{c['c']:g}: {c['val_accuracy']:.3f}" for c in fit.candidates), fit.iterations,
                 fit.scale)
        self._record(index, phase, train_scores, scores[1], None)
        self._finish_phase(phase, 1, "solved", 0, c=fit.c, iterations=fit.iterations, head_scale=fit.scale,
                           candidates=fit.candidates)
        self._checkpoint((index + 1, 0), None, None, None, 0)

    def _cache_mode(self, phase: Phase) -> str:
        """'off', 'features' (one clean pass) or 'views:K' (K augmented passes) for this phase."""
        if not (self.feature_cache and phase.cacheable and supports_cache(self.model)
                and self.plan.bn_policy != "train"):
            return "off"
        if self.data.augmented and self.cache_views > 0:
            return f"views:{self.cache_views}"
        return "features"

    def _phase_data(self, index: int, cached: str) -> tuple[Dataset, Dataset, nn.Module]:
        """(train set, val set, module mapping their inputs to logits) for the phase's cache mode."""
        if cached == "off":
            return self.data.train, self.data.val, self.model
        views = 1 if cached == "features" else self.cache_views
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
        # one fused kernel for every parameter instead of a loop over ~150 tensors: on the CPU at batch 8 the loop
        # took 12 ms of an 85 ms step, the fused update 3 ms (EfficientNet-Lite0, 64 px)
        fused = self.device.type in ("cpu", "cuda") or None
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=self.cfg.momentum, nesterov=True, fused=fused)
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], fused=fused)

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
        started, steps = time.perf_counter(), 0
        for inputs, labels in batches:
            steps += 1
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
                "images_per_s": count / seconds, "steps": steps}

    def _to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=self.memory_format)
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
    def _record(self, index: int, phase: Phase, train: dict, val: dict, head_lr: float | None) -> None:
        """Append the epoch to the history; keep the weights when they are the best so far (val acc, then loss)."""
        row = {"epoch": len(self.history) + 1, "phase": phase.name, "phase_index": index,
               "train_loss": train["loss"], "train_accuracy": train["accuracy"], "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "head_lr": head_lr, "images_per_s": train["images_per_s"],
               "seconds": train["seconds"], "steps": train["steps"]}
        self.history.append(row)
        if self.ctx.on_epoch is not None and self.ctx.dist.is_main:
            self.ctx.on_epoch(self.history)
        log.info("epoch %d (%s): train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s", row["epoch"],
                 phase.name, train["loss"], train["accuracy"], val["loss"], val["accuracy"], train["images_per_s"])
        key = (val["accuracy"], -val["loss"])
        if self.best and key <= (self.best["val_accuracy"], -self.best["val_loss"]):
            return
        self.best = {"epoch": row["epoch"], "phase": phase.name, "val_accuracy": val["accuracy"],
                     "val_loss": val["loss"]}
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def _checkpoint(self, position: tuple[int, int], optimizer: torch.optim.Optimizer | None, schedule: Any,
                    scaler: Any, since_best: int) -> None:
        if not self.ctx.dist.is_main or self.ctx.ckpt_dir is None:
            return
        save_checkpoint(self.ctx.ckpt_dir, {
            "fingerprint": self.fingerprint, "phase": position[0], "epoch": position[1],
            "model": self.model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else {},
            "schedule": schedule.state_dict() if schedule else {},
            "scaler": scaler.state_dict() if scaler is not None else {}, "since_best": since_best,
            "phase_best": self.phase_best,
            "history": self.history, "outcomes": self.outcomes, "best": self.best, "best_state": self.best_state})
