"""Stage ``curve``: the scratch side of the label-efficiency curve, in its own stage.

At every budget x seed (``curve.budgets``, ``curve.seeds``; budgets the label pool cannot give are skipped
and listed), the architecture trains from a seeded random start to convergence by the baseline's recipe
(``baseline``, ``train``), stopped by ``curve.val_per_class`` val images per class, at ``curve.image_size``.
The runs share nothing but the data: they train side by side in worker processes, one per thread this stage
was given (pipeline/training/workers.py). A draw that is the
baseline's own run (the whole pool, its seed, its input size) is taken from the baseline's metrics.json
instead of training it twice (pipeline/evaluation/scratch_curve.py).
It reads the architecture alone (select's architecture.json), so a change of selection, freezing or
fine-tuning never re-runs it. Evaluate learns the transfer side from the very draws recorded here.
Inputs: the dataset, ``architecture.json``, the baseline's ``metrics.json``.
Outputs: ``scratch_runs.json`` (the draws: train and val ids, with every run's figures) and ``metrics.json``.
Params: ``common``, ``train``, ``baseline`` (the scratch recipe, shared with the baseline stage) and ``curve``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.io import read_json, write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.evaluation.references import majority_accuracy
from pipeline.evaluation.scratch_curve import curve_val_ids, scratch_curve
from pipeline.selection.result import read_architecture
from pipeline.stages.protocol import use_validated, validation_field
from pipeline.training.recipes import Setup

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the curve stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    architecture: Path = field(metadata={"help": "architecture.json written by `tlops select`"})
    baseline: Path = field(metadata={"help": "the baseline's metrics.json (its run is shared where a draw is it)"})
    out: Path = field(metadata={"help": "scratch_runs.json to write: the draws and every scratch run"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict:
    """Train the curve's scratch runs and write them with their draws.

    Args:
        params: validated params (reads ``common``, ``train``, ``baseline`` and ``curve``).
        args: stage paths.
    Returns:
        Summary: runs trained and shared, convergence, seconds.
    """
    started = time.perf_counter()
    dataset = use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.curve
    seed_everything(common.seed)
    manifest = read_manifest(dataset)
    pool = train_in_budget(manifest, dataset)
    size = cfg.image_size or common.image_size
    setup = Setup(dataset, read_architecture(args.architecture), read_classes(dataset), size, params.train,
                  select_device(common.device), None, common.num_workers)
    majority = majority_accuracy(manifest.loc[manifest["split"] == "test", "label_idx"])
    curve = scratch_curve(setup, params.baseline, pool["id"].tolist(), pool["label_idx"].tolist(),
                          curve_val_ids(manifest, cfg.val_per_class, common.seed), cfg.budgets, cfg.seeds,
                          majority, read_json(args.baseline))
    runs = curve["runs"]
    metrics = {"runs": len(runs), "trained": sum("shared_with" not in r for r in runs),
               "shared": sum("shared_with" in r for r in runs), "converged": all(r["converged"] for r in runs),
               "not_converged": [f"{r['name']} seed {r['seed']}" for r in runs if not r["converged"]],
               "failed": [f"{r['name']} seed {r['seed']}" for r in runs if r["failed"]],
               "train_seconds": round(sum(r["seconds"] for r in runs if "shared_with" not in r), 1),
               "wall_seconds": round(time.perf_counter() - started, 1), "workers": curve["workers"],
               "threads_per_run": curve["threads_per_run"], "budgets_skipped": curve["skipped"]}
    write_json(args.out, curve)
    write_json(args.metrics, metrics)
    log.info("curve: %d scratch runs (%d shared with the baseline) on %d worker(s), %s, in %.0fs", metrics["runs"],
             metrics["shared"], metrics["workers"], "all converged" if metrics["converged"] else
             f"NOT converged: {', '.join(metrics['not_converged'])}", metrics["wall_seconds"])
    return {**metrics, "out": str(args.out)}
