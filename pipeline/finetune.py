"""Stage ``finetune``: train the selected model by the freeze plan.

Inputs: the dataset directory (train rows inside the label budget; val for early stopping; test is
scored once at the end), ``freeze_plan.json`` from ``tlops freeze``.
Outputs: the model directory (``model.pt`` state dict + ``card.json``), ``metrics.json``, the
per-epoch ``history.csv`` (for ``dvc plots``), a PNG of the curves, and the checkpoint directory
(``last.pt``, kept between runs so that ``--resume`` continues after a crash).
Params: ``common`` (seed, device, image_size, num_workers) and ``finetune``.

Runs as one process, or under ``torchrun --nproc_per_node N -m pipeline.cli finetune ...`` with
DistributedDataParallel (NCCL on CUDA, gloo on the CPU); only rank 0 writes outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import ShardImageDataset, read_classes, read_manifest, use_validated, validation_field
from pipeline.features import dataset_version
from pipeline.training.augment import eval_transform, resolve_augment, train_transform
from pipeline.training.curves import plot_history, write_history
from pipeline.training.ddp import barrier, init_distributed, shutdown
from pipeline.training.loop import FitResult, Precision, RunContext, Trainer, TrainData, evaluate
from pipeline.training.modelcard import save_model
from pipeline.training.plan import FreezePlan, load_plan
from pipeline.zoo import WeightsRef, create_model, get_spec

__all__ = ["Args", "run"]
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


def _datasets(dataset: Path, plan: FreezePlan, params: Params) -> tuple[TrainData, ShardImageDataset]:
    """(train/val data for the trainer, the test split) with the model's preprocessing."""
    spec, size = get_spec(plan.model), params.common.image_size
    augment = resolve_augment(params.finetune.augment, size)
    plain = eval_transform(size, spec.mean, spec.std)
    manifest = read_manifest(dataset)
    budget = manifest[(manifest["split"] == "train") & manifest["in_budget"]]["id"].tolist()
    if not budget:
        raise ValueError(f"{dataset}: no training images inside the label budget")
    data = TrainData(train=ShardImageDataset(dataset, "train", train_transform(augment, size, spec.mean, spec.std),
                                             ids=budget),
                     train_plain=ShardImageDataset(dataset, "train", plain, ids=budget),
                     val=ShardImageDataset(dataset, "val", plain), augmented=augment != "none")
    if len(data.val) == 0:
        raise ValueError(f"{dataset}: the val split is empty (early stopping needs it)")
    return data, ShardImageDataset(dataset, "test", plain)


def _model(plan: FreezePlan, num_classes: int, seed: int) -> torch.nn.Module:
    """The selected network with the weights the selection scored (sha256-checked) and a fresh head."""
    uri, sha = plan.weights.get("uri"), plan.weights.get("sha256")
    ref = WeightsRef(uri, sha, key_map=get_spec(plan.model).weights.key_map) if uri else None
    return create_model(plan.model, num_classes, pretrained=True, weights=ref, seed=seed)


def run(params: Params, args: Args) -> dict:
    """Fine-tune by the plan and write the model, metrics, history and curves.

    Args:
        params: validated params (reads ``common`` and ``finetune``).
        args: stage paths and the ``resume`` flag.
    Returns:
        Summary: best val accuracy and epoch, test accuracy, epochs run, throughput, output paths.
    """
    use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.finetune
    seed_everything(common.seed)
    plan = load_plan(args.plan)
    info, device = init_distributed(select_device(common.device))
    try:
        classes = read_classes(args.dataset)
        data, test = _datasets(Path(args.dataset), plan, params)
        model = _model(plan, len(classes), common.seed)
        ctx = RunContext(device, common.seed, Path(args.checkpoints), common.num_workers, args.resume, info)
        started = time.perf_counter()
        result = Trainer(model, plan, data, cfg, ctx).fit()
        seconds = time.perf_counter() - started
        summary = {}
        if info.is_main:
            summary = _write_outputs(params, args, plan, model, classes, result, test, device, seconds, info.world_size)
        barrier(info)
        return summary
    finally:
        shutdown(info)


def _write_outputs(params: Params, args: Args, plan: FreezePlan, model: torch.nn.Module, classes: list[str],
                   result: FitResult, test: ShardImageDataset, device: torch.device, seconds: float,
                   world_size: int) -> dict:
    precision = Precision.choose(device, params.finetune)
    test_scores = {}
    if len(test):
        loader = DataLoader(test, batch_size=params.finetune.eval_batch_size, num_workers=params.common.num_workers)
        test_scores = evaluate(model, loader, device, precision)
    body = [r["images_per_s"] for r, mode in _rows_with_mode(result) if mode == "off"]
    metrics = {"best_epoch": result.best["epoch"], "best_phase": result.best["phase"],
               "val_accuracy": result.best["val_accuracy"], "val_loss": result.best["val_loss"],
               "test_accuracy": test_scores.get("accuracy"), "test_loss": test_scores.get("loss"),
               "epochs_run": len(result.history), "train_seconds": round(seconds, 2),
               "images_per_s_backbone": round(sum(body) / len(body), 1) if body else None,
               "strategy": plan.strategy, "cache": result.cache_modes, "device": str(device),
               "precision": str(precision.dtype or "float32"), "world_size": world_size}
    manifest, spec = read_manifest(args.dataset), get_spec(plan.model)
    card = {"model": plan.model, "arch": spec.arch, "classes": classes, "input_size": params.common.image_size,
            "mean": list(spec.mean), "std": list(spec.std), "weights": plan.weights, "freeze_plan": plan.to_json(),
            "data": {"dataset": str(args.dataset), "version": dataset_version(manifest["sha256"].tolist()),
                     "train_images": int(((manifest["split"] == "train") & manifest["in_budget"]).sum())},
            "params": {"common": params.common.model_dump(), "finetune": params.finetune.model_dump()},
            "metrics": metrics}
    save_model(args.model_dir, model, card)
    write_json(args.metrics, metrics)
    write_history(args.history, result.history)
    plot_history(args.plot, result.history, f"{plan.model}: {plan.strategy} (best val acc "
                                            f"{metrics['val_accuracy']:.3f}, test acc {metrics['test_accuracy'] or 0:.3f})")
    log.info("fine-tuned %s: val acc %.4f, test acc %s", plan.model, metrics["val_accuracy"], metrics["test_accuracy"])
    return {**metrics, "model_dir": str(args.model_dir), "plot": str(args.plot)}


def _rows_with_mode(result: FitResult) -> list[tuple[dict, str]]:
    return [(row, result.cache_modes[row["phase_index"]]) for row in result.history]
