"""Stage ``select``: score pretrained candidates on cached features and pick one.

Inputs: the dataset directory (train split, rows inside the label budget), the feature cache folder.
Outputs: ``selection.json`` (ranking table, every score with its 95% bootstrap interval, the cost of
scoring, the candidates removed and why, the chosen weights with their sha256), ``metrics.json``,
a score-vs-cost plot (PNG) and ``architecture.json`` (the chosen architecture alone: what the scratch
stages depend on, so that a new selection of the same architecture retrains no scratch model).
Params: ``common`` (seed, device, image_size, num_workers) and ``select``.
The filters, scores and pick rule are in pipeline/selection/candidates.py (docs/select.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.data.shards import dataset_version, read_classes, read_manifest
from pipeline.selection.candidates import RULE, Candidates, assess, rank_candidates, spec_or_error, stratified_sample
from pipeline.selection.figures import plot_selection
from pipeline.selection.result import architecture_record
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the select stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    features: Path = field(metadata={"help": "feature cache folder"})
    out: Path = field(metadata={"help": "selection.json to write"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    plot: Path = field(metadata={"help": "score-vs-cost PNG to write"})
    validation: Path | None = validation_field()
    architecture: Path | None = field(default=None, metadata={
        "help": "architecture.json to write: the chosen architecture alone, what the scratch stages depend on"})


def run(params: Params, args: Args) -> dict:
    """Filter, score and rank the candidates; write selection.json, metrics.json and the plot.

    Args:
        params: validated params (reads ``common`` and ``select``).
        args: stage paths.
    Returns:
        Summary: the pick, its scores, how many were scored and removed.
    """
    dataset = use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.select
    seed_everything(common.seed)
    specs = [spec_or_error(name) for name in dict.fromkeys(cfg.candidates)]
    manifest = read_manifest(dataset)
    ids = stratified_sample(manifest, cfg.sample_per_class, common.seed)
    ctx = Candidates(cfg, dataset, Path(args.features), ids, len(read_classes(dataset)),
                     common.image_size, select_device(common.device), common.seed, common.num_workers,
                     grayscale=bool((manifest["mode"] != "RGB").any()))
    rows = [assess(spec, ctx) for spec in specs]
    ranked, pick = rank_candidates(rows, cfg.rank_by, cfg.tie_tolerance)
    if pick is None:
        raise ValueError("select: no candidate could be scored: " +
                         "; ".join(f"{r['name']}: {r['reason']}" for r in rows))
    selection = {
        "selected": pick["name"], "weights": pick["weights"],
        "rule": RULE.format(rank_by=cfg.rank_by, tol=cfg.tie_tolerance),
        "rank_by": cfg.rank_by, "seed": common.seed, "image_size": common.image_size, "device": str(ctx.device),
        "sample": {"per_class": cfg.sample_per_class, "images": len(ids), "classes": ctx.num_classes,
                   "dataset_version": dataset_version(manifest.set_index("id").loc[ids, "sha256"].tolist())},
        "ranking": ranked,
        "removed": [{k: r[k] for k in ("name", "status", "reason")} for r in rows if r["status"] != "scored"],
        "scoring_seconds": round(sum(r["cost"]["total_s"] for r in ranked), 3),
    }
    write_json(args.out, selection)
    if args.architecture is not None:
        write_json(args.architecture, architecture_record(pick["name"]))
    metrics = {"selected": pick["name"], "scored": len(ranked), "removed": len(selection["removed"]),
               "scoring_seconds": selection["scoring_seconds"], "weights_sha256": pick["weights"].get("sha256"),
               **{f"selected_{k}": v["value"] for k, v in pick["scores"].items()}}
    write_json(args.metrics, metrics)
    plot_selection(selection, args.plot)
    log.info("selected %s (%s = %.4f)", pick["name"], cfg.rank_by, pick["scores"][cfg.rank_by]["value"])
    return {**metrics, "selection": str(args.out), "plot": str(args.plot)}
