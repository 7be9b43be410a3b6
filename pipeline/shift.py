"""Stage `shift`: make the domain-shift "current" set, the stand-in for new data from another domain.

By default every test image is corrupted ImageNet-C style (gaussian noise, blur, contrast, brightness,
pixelate, JPEG, rotation at severities 1-5, seeded per image), recording corruption, severity and
origin_id per row. With ``ingest.shift.source`` set, a real new batch from any ingest source is taken
as the current set instead (corruption "none", severity 0).
Inputs: ``--dataset`` (the ingested dataset).
Outputs: ``--current`` (a dataset directory, all rows split "test"), ``--metrics`` (counts per
corruption and severity), ``--report-dir`` (shift_report.json, corruptions.png).
Params: ``common`` (seed) and ``ingest`` (its ``shift`` subsection; S3/download options for a batch).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch

from pipeline.common.io import atomic_dir, write_json
from pipeline.common.logs import get_logger, progress
from pipeline.config import Params, ShiftParams
from pipeline.data.build import index_labels, pack_source, write_dataset
from pipeline.data.corruptions import corrupt, corruption_seed, encode_png
from pipeline.data.pack import describe_image, store_image
from pipeline.data.plots import plot_image_grid
from pipeline.data.shards import (SHARDS_DIR, ShardWriter, decode_image, iter_records, read_classes,
                                  read_image_bytes, use_validated, validation_field)
from pipeline.data.sources import open_source

__all__ = ["Args", "run", "corruption_plan"]
log = get_logger(__name__)
CLEAN = ("none", 0)


@dataclass
class Args:
    """Paths of the shift stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "the ingested dataset (its test split is corrupted)"})
    current: Path = field(metadata={"help": "the 'current' dataset directory to write"})
    metrics: Path = field(metadata={"help": "metrics JSON: images per corruption and severity"})
    report_dir: Path = field(metadata={"help": "folder for shift_report.json and corruptions.png"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict:
    """Write the current set: corrupted test images, or a new batch from a source.

    Args:
        params: validated params (reads ``common`` and ``ingest``).
        args: input and output paths.
    Returns:
        Summary: images, source, counts per corruption.
    """
    use_validated(args.dataset, args.validation)
    cfg, seed = params.ingest.shift, params.common.seed
    classes = read_classes(args.dataset)
    shard_bytes = int(params.ingest.shard_size_mb * 2**20)
    skipped: list = []
    with atomic_dir(args.current) as tmp:
        if cfg.source:
            source = open_source(cfg.source, params.ingest)
            manifest, skipped = pack_source(source, tmp, shard_bytes)
            manifest["label_idx"] = index_labels(manifest, classes, source.description)
            manifest = manifest.assign(split="test", in_budget=True, corruption=CLEAN[0], severity=CLEAN[1],
                                       origin_id="")
            description = f"new batch {source.description}"
        else:
            manifest = _corrupt_test_split(args.dataset, tmp / SHARDS_DIR, cfg, seed, shard_bytes)
            description = f"test split of {args.dataset} under {len(cfg.corruptions)} corruptions"
        write_dataset(tmp, manifest, classes)
    counts = manifest.groupby(["corruption", "severity"]).size()
    metrics = {"images": len(manifest), "source": description,
               "per_corruption": {c: {str(s): int(n) for s, n in counts[c].items()} for c in counts.index.levels[0]}}
    write_json(args.metrics, metrics)
    write_json(args.report_dir / "shift_report.json", {**metrics, "params": cfg.model_dump(),
                                                        "skipped": [s.__dict__ for s in skipped]})
    _plot_ladder(args.current, manifest, args.report_dir / "corruptions.png")
    log.info("current set: %d images (%s)", len(manifest), description)
    return {"images": len(manifest), "source": description, "current": str(args.current)}


def corruption_plan(image_id: str, cfg: ShiftParams, seed: int) -> list[tuple[str, int]]:
    """The (corruption, severity) pairs one test image gets.

    Args:
        image_id: the image's id in the source dataset.
        cfg: the shift params (corruptions, severities, assignment, include_clean).
        seed: the common seed.
    Returns:
        Pairs in a fixed order; ("none", 0) first when clean copies are kept.
    """
    pairs = list(itertools.product(cfg.corruptions, cfg.severities))
    if cfg.assignment == "random":  # one pair per image, drawn from a hash of the image id
        pairs = [pairs[corruption_seed(seed, image_id, "assign", 0) % len(pairs)]]
    return ([CLEAN] if cfg.include_clean else []) + pairs


def _corrupt_test_split(dataset: Path, shards_dir: Path, cfg: ShiftParams, seed: int,
                        shard_bytes: int) -> pd.DataFrame:
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images: thread start-up costs more than it saves (measured 25x on blur)
    try:
        with ShardWriter(shards_dir, shard_bytes) as writer:
            for origin, data, corruption, severity in progress(_corrupted(dataset, cfg, seed), desc="shift",
                                                                unit="img"):
                fields = {k: origin[k] for k in ("source_path", "label", "label_idx")}
                rows.append(store_image(writer, f"{origin['id']}-{corruption}-{severity}", data,
                                        describe_image(data), **fields, split="test", in_budget=True,
                                        corruption=corruption, severity=severity, origin_id=origin["id"]))
    finally:
        torch.set_num_threads(threads)
    if not rows:
        raise ValueError(f"{dataset}: the test split is empty: nothing to corrupt")
    return pd.DataFrame(rows)


def _corrupted(dataset: Path, cfg: ShiftParams, seed: int) -> Iterator[tuple[dict, bytes, str, int]]:
    for origin, data in iter_records(dataset, split="test"):
        image = decode_image(data)
        for corruption, severity in corruption_plan(origin["id"], cfg, seed):
            if (corruption, severity) == CLEAN:
                yield origin, data, corruption, severity
            else:
                out = corrupt(image, corruption, severity, corruption_seed(seed, origin["id"], corruption, severity))
                yield origin, encode_png(out), corruption, severity


def _plot_ladder(current: Path, manifest: pd.DataFrame, target: Path) -> None:
    """Corruptions (rows) x severities (columns) of one image, so people can see what each level does."""
    origin = manifest["origin_id"].iloc[0]
    if not origin:  # a new batch: no ladder to show, show a sample instead
        rows = [[decode_image(d) for _, d in itertools.islice(iter_records(current), 8)]]
        plot_image_grid(rows, ["batch"], [], target, "current set: new batch (sample)")
        return
    mine = manifest[manifest["origin_id"] == origin].set_index(["corruption", "severity"])
    severities = sorted(set(manifest["severity"]))
    grid, names = [], [c for c in dict.fromkeys(manifest["corruption"]) if c != CLEAN[0]]
    for name in names:
        grid.append([_image(current, mine, name, s) for s in severities if (name, s) in mine.index
                     or (s == 0 and CLEAN in mine.index)])
    plot_image_grid(grid, names, [f"severity {s}" for s in severities], target,
                    f"corruption ladder of test image {origin}")


def _image(current: Path, rows: pd.DataFrame, corruption: str, severity: int):
    key = CLEAN if severity == 0 else (corruption, severity)
    return decode_image(read_image_bytes(current, rows.loc[key]))
