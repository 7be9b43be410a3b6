"""Stage ``baseline``: the same architecture trained from random initialisation, to convergence.

Same train images (inside the label budget), augmentation, seed, optimizer, clipping and loop as the
fine-tune (the ``train`` params drive the engine for both), but every block trains from a seeded
random start at its own larger learning rate, with BatchNorm learning its statistics, until the
stopping rule ends it (pipeline/training/recipes.py): ``baseline.patience`` epochs without a better
val accuracy, or the ``baseline.max_epochs`` cap, which a run still improving reports as not
converged. The evaluation compares against this converged model, never an under-trained one.
Inputs: the dataset directory, ``architecture.json`` (select's pick, the architecture alone: a change of
selection, freezing or fine-tuning that keeps it never retrains the baseline).
Outputs: the model directory (``model.pt`` + ``card.json``), ``metrics.json`` (converged, stopped by,
steps, epochs, seconds, val/test accuracy), ``history.csv`` (dvc plots), a PNG of the curves, and
the checkpoint directory.
Params: ``common``, ``baseline``, and ``train`` (the loop shared with the fine-tune; a change there re-runs
the baseline too, so that the comparison stays fair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.common.device import select_device
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.selection.result import read_architecture
from pipeline.stages.protocol import use_validated, validation_field
from pipeline.training.outputs import TrainingOutputs
from pipeline.training.recipes import Setup, train_scratch

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the baseline stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    architecture: Path = field(metadata={"help": "architecture.json written by `tlops select`"})
    model_dir: Path = field(metadata={"help": "model directory to write (model.pt + card.json)"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    history: Path = field(metadata={"help": "per-epoch history CSV to write (dvc plots)"})
    plot: Path = field(metadata={"help": "PNG of the training curves to write"})
    checkpoints: Path = field(metadata={"help": "checkpoint directory"})
    validation: Path | None = validation_field()
    live: Path | None = field(default=None, metadata={
        "help": "DVCLive folder: per-epoch metrics.json and plots for dvc exp show / plots diff (None: not written)"})


def run(params: Params, args: Args) -> dict:
    """Train the scratch baseline to convergence and write the model, metrics, history and curves.

    Args:
        params: validated params (reads ``common``, ``baseline`` and ``train``).
        args: stage paths.
    Returns:
        Summary: converged, steps, epochs, best val accuracy, test accuracy, training seconds.
    """
    dataset = use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.baseline
    seed_everything(common.seed)
    architecture = read_architecture(args.architecture)
    classes = read_classes(dataset)
    manifest = read_manifest(dataset)
    ids = train_in_budget(manifest, dataset)["id"].tolist()
    setup = Setup(dataset, architecture, classes, common.image_size, params.train,
                  select_device(common.device), Path(args.checkpoints), common.num_workers)
    log.info("scratch baseline %s on %d images: lr %g, patience %d, at most %d epochs", architecture, len(ids), cfg.lr,
             cfg.patience, cfg.max_epochs)
    outputs = TrainingOutputs(args.model_dir, args.metrics, args.history, args.plot, args.live)
    trained = train_scratch(setup, cfg, common.seed, ids, on_epoch=outputs.on_epoch())
    fit, outcome = trained.fit, trained.fit.phases[-1]
    metrics = {"converged": fit.converged, "stopped_by": outcome["stopped_by"], "epochs_run": outcome["epochs"],
               "max_epochs": cfg.max_epochs, "optimizer_steps": fit.steps, "batch_size": trained.batch_size,
               "best_epoch": fit.best["epoch"], "val_accuracy": fit.best["val_accuracy"],
               "val_loss": fit.best["val_loss"], "test_accuracy": trained.test["accuracy"],
               "test_loss": trained.test["loss"], "test_classes_predicted": trained.test["classes_predicted"],
               "train_seconds": round(trained.seconds, 2), "lr": cfg.lr, "seed": common.seed,
               "image_size": common.image_size, "train_images": len(ids),
               "val_images": int((manifest["split"] == "val").sum()), "threads": torch.get_num_threads(),
               "trainable_params": trained.plan.phases[0].trainable_params,
               "images_per_s": round(sum(r["images_per_s"] for r in fit.history) / len(fit.history), 1)}
    card = {"init": "random", "seed": common.seed, "freeze_plan": trained.plan.to_json(), "train_images": len(ids),
            "params": {"common": common.model_dump(), "train": params.train.model_dump(),
                       "baseline": cfg.model_dump()}}
    state = "converged" if fit.converged else "NOT converged"
    outputs.write(trained.model, card, metrics, fit.history, f"{architecture} from scratch, {state} after "
                  f"{outcome['epochs']} epochs (best val acc {metrics['val_accuracy']:.3f}, test acc "
                  f"{metrics['test_accuracy']:.3f})")
    log.info("scratch %s: %s (%s) after %d steps, val acc %.4f, test acc %.4f in %.0fs", architecture, state,
             outcome["stopped_by"], fit.steps, metrics["val_accuracy"], metrics["test_accuracy"], trained.seconds)
    return {**metrics, "model_dir": str(args.model_dir)}
