"""Stage `ingest`: read images from a source, pack them into tar shards, split train/val/test.

Inputs: the images named by ``ingest.source`` (sklearn-digits, a folder, a .csv/.parquet table,
s3://bucket/prefix, torchvision:<Dataset>).
Outputs: ``--dataset`` (manifest.parquet, classes.json, splits.json, shards/), ``--metrics``
(split sizes, class counts, skipped count), ``--report-dir`` (ingest_report.json listing every skipped
item with its reason; class_counts.png; samples.png).
Params: ``common`` (seed salts the split hash) and ``ingest``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.io import atomic_dir, write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.build import check_class_sizes, index_labels, pack_source, write_dataset
from pipeline.data.plots import plot_class_counts, plot_image_grid
from pipeline.data.shards import ShardImageDataset
from pipeline.data.sources import open_source
from pipeline.data.splits import assign_budget, assign_splits

__all__ = ["Args", "run"]
log = get_logger(__name__)
_SAMPLES_PER_CLASS = 8
_MAX_CLASSES_SHOWN = 20


@dataclass
class Args:
    """Paths of the ingest stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "dataset directory to write (manifest + shards)"})
    metrics: Path = field(metadata={"help": "metrics JSON: split sizes, class counts, skipped count"})
    report_dir: Path = field(metadata={"help": "folder for ingest_report.json and the figures"})


def run(params: Params, args: Args) -> dict:
    """Ingest the configured source into a sharded, split dataset.

    Args:
        params: validated params (reads ``common`` and ``ingest``).
        args: output paths.
    Returns:
        Summary: images, classes, split sizes, skipped count, shards.
    """
    cfg, seed = params.ingest, params.common.seed
    started = time.perf_counter()
    source = open_source(cfg.source, cfg)
    log.info("ingesting %s", source.description)
    with atomic_dir(args.dataset) as tmp:
        manifest, skipped = pack_source(source, tmp, int(cfg.shard_size_mb * 2**20))
        check_class_sizes(manifest, source.labels, cfg.min_images_per_class, skipped, source.description)
        classes = sorted(set(manifest["label"]))
        manifest["label_idx"] = index_labels(manifest, classes, source.description)
        manifest["split"] = assign_splits(manifest["sha256"], cfg.val_fraction, cfg.test_fraction, seed)
        manifest["in_budget"] = assign_budget(manifest, cfg.budget_per_class, cfg.budget_fraction, seed)
        summary = write_dataset(tmp, manifest, classes)
    seconds = time.perf_counter() - started
    log.info("%d images in %d classes (%s), %d skipped, %.1fs (%.0f img/s)", len(manifest), len(classes),
             ", ".join(f"{k} {v}" for k, v in summary["sizes"].items()), len(skipped), seconds,
             len(manifest) / seconds)
    metrics = {"images": len(manifest), "classes": len(classes), "skipped": len(skipped),
               "splits": summary["sizes"], "train_in_budget": sum(summary["train_in_budget"].values()),
               "shards": int(manifest["shard"].nunique()), "dataset_mb": round(manifest["bytes"].sum() / 2**20, 2),
               "class_counts": summary["class_counts"]}
    write_json(args.metrics, metrics)
    write_report(args.report_dir, source.description, summary, skipped, args.dataset)
    return {k: v for k, v in metrics.items() if k != "class_counts"} | {"dataset": str(args.dataset)}


def write_report(report_dir: Path, description: str, summary: dict, skipped: list, dataset: Path) -> None:
    """Write ingest_report.json (every skipped item with its reason) and the two figures.

    Args:
        report_dir: output folder.
        description: the source, in words.
        summary: the splits summary.
        skipped: the Skipped items.
        dataset: the written dataset (for sample images).
    """
    write_json(report_dir / "ingest_report.json", {
        "source": description, "splits": summary,
        "skipped_by_reason": Counter(s.kind for s in skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]})
    plot_class_counts(summary, report_dir / "class_counts.png", f"images per class and split: {description}")
    samples = ShardImageDataset(dataset, split="train")
    classes = samples.classes[:_MAX_CLASSES_SHOWN]
    grid = []
    for label_idx in range(len(classes)):
        picks = samples.rows.index[samples.rows["label_idx"] == label_idx][:_SAMPLES_PER_CLASS]
        grid.append([samples[i][0] for i in picks])
    samples.close()
    plot_image_grid(grid, classes, [], report_dir / "samples.png", f"train samples per class: {description}")
