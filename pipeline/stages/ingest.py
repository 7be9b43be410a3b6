"""Stage `ingest`: read images from a source, pack them into tar shards, split train/val/test.

Inputs: the images at ``source.location`` (sklearn-digits, a folder, a .csv/.parquet table,
s3://bucket/prefix, torchvision:<Dataset>).
Outputs: ``--dataset`` (manifest.parquet, classes.json, splits.json, shards/), ``--metrics``
(split sizes, class counts, skipped count), ``--report-dir`` (ingest_report.json listing every skipped
item with its reason; class_counts.png; samples.png).
Params: ``common`` (seed salts the split hash; shard size), ``source`` (where and how to read), ``ingest`` (splits
and label budget) and ``validate.max_pixels`` (larger images are stored undecoded, for the gate to refuse).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.io import atomic_dir, write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.build import check_class_sizes, index_labels, pack_source, write_dataset, write_ingest_report
from pipeline.data.sources import open_source
from pipeline.data.splits import assign_budget, assign_splits

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the ingest stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "dataset directory to write (manifest + shards)"})
    metrics: Path = field(metadata={"help": "metrics JSON: split sizes, class counts, skipped count"})
    report_dir: Path = field(metadata={"help": "folder for ingest_report.json and the figures"})


def run(params: Params, args: Args) -> dict:
    """Ingest the configured source into a sharded, split dataset.

    Args:
        params: validated params (reads ``common``, ``source``, ``ingest`` and ``validate.max_pixels``).
        args: output paths.
    Returns:
        Summary: images, classes, split sizes, skipped count, shards.
    """
    cfg, seed = params.ingest, params.common.seed
    started = time.perf_counter()
    source = open_source(params.source.location, params.source)
    log.info("ingesting %s", source.description)
    with atomic_dir(args.dataset) as tmp:
        manifest, skipped = pack_source(source, tmp, int(params.common.shard_size_mb * 2**20),
                                        params.source.max_unreadable_fraction)
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
    write_ingest_report(args.report_dir, source.description, summary, skipped, args.dataset,
                        params.validate_.max_pixels)
    return {k: v for k, v in metrics.items() if k != "class_counts"} | {"dataset": str(args.dataset)}
