"""Stage ``baseline``: the scratch side of the verdict. The same architecture trained from random initialisation to
convergence on every label (the baseline), and at every budget x seed of the label-efficiency curve.

The baseline: same train images (inside the label budget), augmentation, seed, optimizer, clipping and loop as
the fine-tune (the ``train`` params drive the engine for both), but every block trains from a seeded random
start at its own larger learning rate, with BatchNorm learning its statistics, until the stopping rule ends it
(pipeline/training/recipes.py): ``baseline.patience`` epochs without a better val accuracy, or the
``baseline.max_epochs`` cap, which a run still improving reports as not converged. The evaluation compares
against this converged model, never an under-trained one.
The curve: at every budget x seed (``curve.budgets``, ``curve.seeds``; budgets the label pool cannot give are
skipped and listed) the same recipe on a seeded draw, stopped by ``curve.val_per_class`` val images per class, at
``curve.image_size``. Evaluate learns the transfer side from the very draws recorded here.
All of them train side by side in one pool of worker processes, one per thread this stage was given
(pipeline/evaluation/scratch_curve.py says why one pool); a draw that is the baseline's own run (the whole pool,
its seed, its input size) is not trained twice.
It reads the architecture alone (select's ``architecture.json``), so a change of selection, freezing or
fine-tuning never re-runs it.
Inputs: the dataset directory, ``architecture.json``.
Outputs: the baseline's model directory (``model.pt`` + ``card.json``), ``metrics.json`` (converged, stopped by,
steps, epochs, seconds, val/test accuracy), ``history.csv`` (dvc plots), a PNG of its curves and its checkpoint
directory (a killed stage resumes the baseline from it); the curve's ``scratch_runs.json`` (the draws: train and
val ids, with every run's figures) and its ``metrics.json``.
Params: ``common``, ``baseline`` (the scratch recipe), ``curve`` and ``train`` (the loop shared with the
fine-tune; a change there re-runs this stage too, so that the comparison stays fair).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.evaluation.references import majority_accuracy
from pipeline.evaluation.scratch_baseline import BaselineJob
from pipeline.evaluation.scratch_curve import curve_metrics, curve_val_ids, scratch_side
from pipeline.selection.result import read_architecture
from pipeline.stages.protocol import use_validated, validation_field
from pipeline.training.outputs import TrainingOutputs
from pipeline.training.recipes import Setup

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the baseline stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    architecture: Path = field(metadata={"help": "architecture.json written by `tlops select`"})
    model_dir: Path = field(metadata={"help": "the baseline's model directory to write (model.pt + card.json)"})
    metrics: Path = field(metadata={"help": "the baseline's metrics.json to write"})
    history: Path = field(metadata={"help": "the baseline's per-epoch history CSV to write (dvc plots)"})
    plot: Path = field(metadata={"help": "PNG of the baseline's training curves to write"})
    checkpoints: Path = field(metadata={"help": "the baseline's checkpoint directory"})
    curve: Path = field(metadata={"help": "scratch_runs.json to write: the curve's draws and every scratch run"})
    curve_metrics: Path = field(metadata={"help": "the curve's metrics.json to write"})
    validation: Path | None = validation_field()
    live: Path | None = field(default=None, metadata={
        "help": "DVCLive folder: per-epoch metrics.json and plots for dvc exp show / plots diff (None: not written)"})


def run(params: Params, args: Args) -> dict:
    """Train the scratch baseline and the curve's scratch runs to convergence and write them.

    Args:
        params: validated params (reads ``common``, ``baseline``, ``curve`` and ``train``).
        args: stage paths.
    Returns:
        Summary: the baseline's metrics, and the curve's runs trained and shared, convergence, seconds.
    """
    started = time.perf_counter()
    dataset = use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.curve
    seed_everything(common.seed)
    manifest = read_manifest(dataset)
    pool = train_in_budget(manifest, dataset)
    pool_ids = pool["id"].tolist()
    setup = Setup(dataset, read_architecture(args.architecture), read_classes(dataset), common.image_size,
                  params.train, select_device(common.device), Path(args.checkpoints), common.num_workers)
    baseline = BaselineJob(setup, params.baseline, common.seed, pool_ids,
                           int((manifest["split"] == "val").sum()),
                           TrainingOutputs(args.model_dir, args.metrics, args.history, args.plot, args.live),
                           {"common": common.model_dump(), "train": params.train.model_dump(),
                            "baseline": params.baseline.model_dump()})
    curve_setup = replace(setup, image_size=cfg.image_size or common.image_size, checkpoints=None)
    majority = majority_accuracy(manifest.loc[manifest["split"] == "test", "label_idx"])
    side = scratch_side(curve_setup, params.baseline, pool_ids, pool["label_idx"].tolist(),
                        curve_val_ids(manifest, cfg.val_per_class, common.seed), cfg.budgets, cfg.seeds, majority,
                        baseline)
    metrics = curve_metrics(side.curve, time.perf_counter() - started)
    write_json(args.curve, side.curve)
    write_json(args.curve_metrics, {"curve": metrics})
    log.info("curve: %d scratch runs (%d shared with the baseline) on %d worker(s), %s, in %.0fs", metrics["runs"],
             metrics["shared"], metrics["workers"], "all converged" if metrics["converged"] else
             f"NOT converged: {', '.join(metrics['not_converged'])}", metrics["wall_seconds"])
    return {**side.baseline, "model_dir": str(args.model_dir), "curve": metrics}
