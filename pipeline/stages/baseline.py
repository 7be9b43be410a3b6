"""Stage ``baseline``: the same architecture trained from random initialisation, on the same budget.

Same train images (inside the label budget), same augmentation, seed, batch size, optimizer,
schedule and loop as the fine-tune (the ``finetune`` params drive the engine for both), but every
block trains from a seeded random start at its own larger learning rate, with BatchNorm learning its
statistics. Budget: as many optimizer steps as the fine-tune took (default; ``baseline.steps`` sets a
number), or about as much training time (``budget: wall_clock``, timed from one measured epoch).
Inputs: the dataset directory, ``freeze_plan.json`` (the architecture), the fine-tuned model directory
(its card holds the fine-tune's epochs and training time).
Outputs: the model directory (``model.pt`` + ``card.json``), ``metrics.json``, ``history.csv``
(dvc plots), a PNG of the curves, and the checkpoint directory.
Params: ``common``, ``baseline``, and ``finetune`` (the shared loop settings; a change there must re-run
the baseline too, so that the comparison stays fair).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.io import read_json, write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget, use_validated, validation_field
from pipeline.freezing.plan import FreezePlan, load_plan
from pipeline.models.loaded import CARD
from pipeline.training.curves import plot_history, write_history
from pipeline.training.recipes import Setup, Trained, epochs_for_steps, steps_per_epoch, train_one

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the baseline stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    plan: Path = field(metadata={"help": "freeze_plan.json: the architecture"})
    finetuned: Path = field(metadata={"help": "the fine-tuned model directory (its card: training time)"})
    model_dir: Path = field(metadata={"help": "model directory to write (model.pt + card.json)"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    history: Path = field(metadata={"help": "per-epoch history CSV to write (dvc plots)"})
    plot: Path = field(metadata={"help": "PNG of the training curves to write"})
    checkpoints: Path = field(metadata={"help": "checkpoint directory"})
    validation: Path | None = validation_field()


def _finetune_metric(finetuned: Path, key: str) -> float:
    """A training figure the fine-tune recorded in its model card (the budget scratch gets)."""
    value = read_json(finetuned / CARD).get("metrics", {}).get(key)
    if not value:
        raise ValueError(f"{finetuned / CARD}: no metrics.{key}, needed for the baseline's budget "
                         "(re-run `tlops finetune`)")
    return float(value)


def _epochs(params: Params, args: Args, setup: Setup, ids: list[str]) -> tuple[int, str]:
    """Epochs of the scratch run and how they were decided."""
    cfg, batch = params.baseline, setup.cfg.batch_size
    if cfg.budget == "steps":
        # by default: the optimizer steps the fine-tune actually took (its early stop included)
        steps = cfg.steps or int(_finetune_metric(args.finetuned, "epochs_run")) * steps_per_epoch(len(ids), batch)
        source = "baseline.steps" if cfg.steps else "the fine-tune's"
        epochs = epochs_for_steps(steps, len(ids), batch)
        return epochs, (f"{steps} optimizer steps asked ({source}), "
                        f"{epochs * steps_per_epoch(len(ids), batch)} in whole epochs")
    target = _finetune_metric(args.finetuned, "train_seconds")
    probe = train_one(replace(setup, checkpoints=None), None, False, params.common.seed, ids, epochs=1, lr=cfg.lr,
                      score_test=False)
    per_epoch = probe.fit.history[0]["seconds"]
    epochs = max(1, round(target / per_epoch))
    return epochs, f"{target:.1f}s of training (the fine-tune's) at {per_epoch:.1f}s per scratch epoch"


def run(params: Params, args: Args) -> dict:
    """Train the scratch baseline and write the model, metrics, history and curves.

    Args:
        params: validated params (reads ``common``, ``baseline`` and ``finetune``).
        args: stage paths.
    Returns:
        Summary: steps, epochs, best val accuracy, test accuracy, training seconds.
    """
    use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.baseline
    seed_everything(common.seed)
    plan = load_plan(args.plan)
    classes = read_classes(args.dataset)
    ids = train_in_budget(read_manifest(args.dataset), args.dataset)["id"].tolist()
    loop_cfg = params.finetune.model_copy(update={"patience": cfg.patience})
    setup = Setup(Path(args.dataset), plan.model, classes, common.image_size, loop_cfg,
                  select_device(common.device), Path(args.checkpoints), common.num_workers)
    epochs, why = _epochs(params, args, setup, ids)
    log.info("scratch baseline %s: %d epochs on %d images = %s, lr %g", plan.model, epochs, len(ids), why, cfg.lr)
    trained = train_one(setup, None, False, common.seed, ids, epochs=epochs, lr=cfg.lr)
    return _write_outputs(params, args, plan, trained, why, len(ids))


def _write_outputs(params: Params, args: Args, plan: FreezePlan, trained: Trained, why: str, n_train: int) -> dict:
    fit = trained.fit
    metrics = {"best_epoch": fit.best["epoch"], "val_accuracy": fit.best["val_accuracy"],
               "val_loss": fit.best["val_loss"], "test_accuracy": trained.test["accuracy"],
               "test_loss": trained.test["loss"], "epochs_run": len(fit.history),
               "optimizer_steps": len(fit.history) * steps_per_epoch(n_train, params.finetune.batch_size),
               "train_seconds": round(trained.seconds, 2), "lr": params.baseline.lr, "budget": why,
               "trainable_params": trained.plan.phases[0].trainable_params,
               "images_per_s": round(sum(r["images_per_s"] for r in fit.history) / len(fit.history), 1)}
    card = {"init": "random", "seed": params.common.seed, "freeze_plan": trained.plan.to_json(),
            "train_images": n_train,
            "params": {"common": params.common.model_dump(), "finetune": params.finetune.model_dump(),
                       "baseline": params.baseline.model_dump()}, "metrics": metrics}
    trained.model.save(args.model_dir, card)
    write_json(args.metrics, metrics)
    write_history(args.history, fit.history)
    plot_history(args.plot, fit.history, f"{plan.model} from scratch (best val acc {metrics['val_accuracy']:.3f}, "
                                         f"test acc {metrics['test_accuracy']:.3f})")
    log.info("scratch %s: val acc %.4f, test acc %.4f in %.0fs", plan.model, metrics["val_accuracy"],
             metrics["test_accuracy"], trained.seconds)
    return {**metrics, "model_dir": str(args.model_dir)}
