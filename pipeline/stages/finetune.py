"""Stage ``finetune``: train the selected model by the freeze plan.

Inputs: the dataset directory (train rows inside the label budget; val for early stopping; test is
scored once at the end), ``freeze_plan.json`` from ``tlops freeze`` (the model and the weights the
selection chose).
Outputs: the model directory (``model.pt`` state dict + ``card.json``), ``metrics.json``, the
per-epoch ``history.csv`` (for ``dvc plots``), a PNG of the curves, and the checkpoint directory
(``last.pt``, kept between runs so that ``--resume`` continues after a crash).
Params: ``common`` (seed, device, image_size, num_workers), ``train`` (the loop, shared with the baseline) and
``finetune`` (its stopping rule, head-only caching, processes).

Runs as one process, or under ``torchrun --nproc_per_node N -m pipeline.cli finetune ...`` with
DistributedDataParallel (NCCL on CUDA, gloo on the CPU); only rank 0 writes outputs. With
``finetune.nproc_per_node`` > 1 (or ``TLOPS_NPROC_PER_NODE``) ``tlops finetune`` starts those ranks itself
(:func:`launch`): the same command from DVC, the flow or a shell.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch.utils.data import DataLoader

from pipeline.common.device import select_device
from pipeline.common.logs import get_logger
from pipeline.common.processes import resume_requested
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import dataset_version, read_classes, read_manifest, train_in_budget
from pipeline.freezing.plan import FreezePlan, load_plan
from pipeline.models import LoadedModel
from pipeline.stages.protocol import use_validated, validation_field
from pipeline.training.data import small_data_batch, training_data
from pipeline.training.ddp import (barrier, init_distributed, processes_wanted, run_torchrun, shutdown,
                                   torchrun_command, under_torchrun)
from pipeline.training.loop import FitResult, Precision, RunContext, Trainer, evaluate
from pipeline.training.outputs import TrainingOutputs

__all__ = ["Args", "run", "launch"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths and flags of the finetune stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    plan: Path = field(metadata={"help": "freeze_plan.json written by `tlops freeze`"})
    model_dir: Path = field(metadata={"help": "model directory to write (model.pt + card.json)"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    history: Path = field(metadata={"help": "per-epoch history CSV to write (dvc plots)"})
    plot: Path = field(metadata={"help": "PNG of the training curves to write"})
    checkpoints: Path = field(metadata={"help": "checkpoint directory (kept between runs for --resume)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint"})
    validation: Path | None = validation_field()
    live: Path | None = field(default=None, metadata={
        "help": "DVCLive folder: per-epoch metrics.json and plots for dvc exp show / plots diff (None: not written)"})


def run(params: Params, args: Args) -> dict:
    """Fine-tune by the plan and write the model, metrics, history and curves.

    Args:
        params: validated params (reads ``common``, ``train`` and ``finetune``).
        args: stage paths and the ``resume`` flag.
    Returns:
        Summary: best val accuracy and epoch, test accuracy, epochs run, throughput, output paths.
    """
    dataset = use_validated(args.dataset, args.validation)
    common, cfg, own = params.common, params.train, params.finetune
    seed_everything(common.seed)
    plan = load_plan(args.plan)
    info, device = init_distributed(select_device(common.device))
    try:
        classes = read_classes(dataset)
        # the weights the selection scored (sha256-checked), a fresh head
        model = LoadedModel.selected(plan.model, plan.weights, len(classes), common.image_size, seed=common.seed,
                                     classes=classes)
        ids = train_in_budget(read_manifest(dataset), dataset)["id"].tolist()
        loop = cfg.model_copy(update={"batch_size": small_data_batch(len(ids), cfg.batch_size)})
        data = training_data(model.preprocessing, dataset, ids, cfg.augment,
                             min_epoch_items=loop.min_epoch_steps * loop.batch_size)
        outputs = TrainingOutputs(args.model_dir, args.metrics, args.history, args.plot, args.live)
        ctx = RunContext(device, common.seed, Path(args.checkpoints), common.num_workers,
                         args.resume or resume_requested(), info, on_epoch=outputs.on_epoch())
        started = time.perf_counter()
        result = Trainer(model.network, plan, data, loop, ctx, patience=own.patience,
                         feature_cache=own.feature_cache, cache_views=own.cache_views).fit()
        seconds = time.perf_counter() - started
        summary = {}
        if info.is_main:
            summary = _write_outputs(params, dataset, outputs, plan, model.to(device), result, seconds,
                                     info.world_size)
        barrier(info)
        return summary
    finally:
        shutdown(info)


def launch(params: Params, argv: list[str]) -> Callable[[], None] | None:
    """The stage as several processes, when asked for: ``tlops finetune`` relaunches itself under torchrun.

    Asked for by ``finetune.nproc_per_node`` > 1, or ``TLOPS_NPROC_PER_NODE`` (an integer, or ``auto``:
    one process per GPU), which overrides it. Never from inside torchrun (RANK / WORLD_SIZE set).

    Args:
        params: the validated params (profile and ``--set`` overrides applied).
        argv: this command's arguments after ``finetune``; the ranks get them unchanged (and this
            environment, ``TLOPS_RESUME`` included).
    Returns:
        None to run in this process; else a callable that runs ``torchrun --standalone --nproc_per_node N
        -m pipeline.cli finetune <argv>``, waits for it and raises on a failed rank with that rank's exit
        code (:func:`pipeline.training.ddp.run_torchrun`). Rank 0 prints the summary.
    Raises:
        ValueError: more processes than CUDA devices, a device DDP does not run on, a bad
            ``TLOPS_NPROC_PER_NODE``.
    """
    if under_torchrun():
        return None
    device = select_device(params.common.device)
    nproc, source = processes_wanted(params.finetune.nproc_per_node, device, "finetune.nproc_per_node")
    if nproc == 1:
        return None
    command = torchrun_command(nproc, ["-m", "pipeline.cli", "finetune", *argv])
    backend = "NCCL, one process per GPU" if device.type == "cuda" else "gloo on the CPU"

    def ranks() -> None:
        print(f"tlops finetune: launched under torchrun with {nproc} processes ({source}; DDP, {backend}): "
              f"{Path(command[0]).name} {' '.join(command[1:])}", file=sys.stderr, flush=True)
        run_torchrun(command)

    return ranks


def _kept(result: FitResult) -> dict:
    """Which phase's weights were kept, and why: a fine-tune phase replaces the probe only when it beats it on val."""
    probe = [row["val_accuracy"] for row in result.history if row["phase"] == "linear_probe"]
    if not probe:
        return {"probe_val_accuracy": None, "kept_reason": f"best val accuracy in phase {result.best['phase']}"}
    later = [row["val_accuracy"] for row in result.history if row["phase"] != "linear_probe"]
    best = result.best
    if best["phase"] == "linear_probe":
        why = (f"the linear probe (val accuracy {probe[0]:.4f}) was kept: the fine-tune phase never beat it on val "
               f"(its best {max(later):.4f})" if later else "the plan is a linear probe")
    elif best["val_accuracy"] > probe[0]:
        why = f"the {best['phase']} phase beat the linear probe on val ({best['val_accuracy']:.4f} > {probe[0]:.4f})"
    else:
        why = f"the {best['phase']} phase matched the linear probe's val accuracy ({probe[0]:.4f}) at a lower loss"
    return {"probe_val_accuracy": probe[0], "kept_reason": why}


def _write_outputs(params: Params, dataset: os.PathLike, outputs: TrainingOutputs, plan: FreezePlan, model: LoadedModel,
                   result: FitResult, seconds: float, world_size: int) -> dict:
    device, precision = model.device, Precision.choose(model.device, params.train)
    test = model.inputs(dataset, "test")
    test_scores = {}
    if len(test):
        loader = DataLoader(test, batch_size=params.train.eval_batch_size, num_workers=params.common.num_workers)
        test_scores = evaluate(model.network, loader, device, precision)
    body = [row["images_per_s"] for row in result.history if result.cache_modes[row["phase_index"]] == "off"]
    metrics = {"best_epoch": result.best["epoch"], "best_phase": result.best["phase"], **_kept(result),
               "val_accuracy": result.best["val_accuracy"], "val_loss": result.best["val_loss"],
               "test_accuracy": test_scores.get("accuracy"), "test_loss": test_scores.get("loss"),
               "epochs_run": len(result.history), "train_seconds": round(seconds, 2),
               "images_per_s_backbone": round(sum(body) / len(body), 1) if body else None,
               "strategy": plan.strategy, "cache": result.cache_modes, "device": str(device),
               "precision": str(precision.dtype or "float32"), "world_size": world_size,
               "weights_sha256": model.weights.get("sha256")}
    manifest = read_manifest(dataset)
    card = {"freeze_plan": plan.to_json(),
            "data": {"dataset": str(dataset), "version": dataset_version(manifest["sha256"].tolist()),
                     "train_images": len(train_in_budget(manifest, dataset))},
            "params": {"common": params.common.model_dump(), "train": params.train.model_dump(),
                       "finetune": params.finetune.model_dump()}}
    outputs.write(model, card, metrics, result.history, f"{plan.model}: {plan.strategy} (best val acc "
                  f"{metrics['val_accuracy']:.3f}, test acc {metrics['test_accuracy'] or 0:.3f})")
    log.info("fine-tuned %s: val acc %.4f, test acc %s", plan.model, metrics["val_accuracy"], metrics["test_accuracy"])
    return {**metrics, "model_dir": str(outputs.model_dir), "plot": str(outputs.plot)}
