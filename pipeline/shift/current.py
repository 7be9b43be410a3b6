"""Building the current set: every test image under each corruption x severity (or one seeded pair per
image), clean copies kept, or a new batch from any ingest source taken as it is; and its figure.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch

from pipeline.common.logs import progress
from pipeline.config import IngestParams, ShiftParams
from pipeline.data.build import index_labels, pack_source
from pipeline.data.images import decode_rgb
from pipeline.data.pack import describe_image, store_image
from pipeline.data.plots import plot_image_grid
from pipeline.data.shards import ShardWriter, iter_records, read_image_bytes
from pipeline.data.sources import open_source
from pipeline.data.sources.base import Skipped
from pipeline.shift.corruptions import corrupt, corruption_seed, encode_png

__all__ = ["CLEAN", "corruption_plan", "corrupt_test_split", "pack_batch", "plot_current"]
CLEAN = ("none", 0)


def pack_batch(source_uri: str, ingest: IngestParams, dataset_dir: Path, shard_bytes: int,
               classes: list[str]) -> tuple[pd.DataFrame, list[Skipped], str]:
    """A new batch from any ingest source, packed as a current set (corruption ``none``, severity 0).

    Args:
        source_uri: the batch (a folder, a manifest, s3://...).
        ingest: the ingest params (S3 endpoint, credentials profile, workers, retries).
        dataset_dir: the (temporary) current-set directory.
        shard_bytes: target shard size.
        classes: the training classes (every label must be one of them).
    Returns:
        (manifest rows, what was skipped, a description of the batch).
    """
    source = open_source(source_uri, ingest)
    manifest, skipped = pack_source(source, dataset_dir, shard_bytes)
    manifest["label_idx"] = index_labels(manifest, classes, source.description)
    manifest = manifest.assign(split="test", in_budget=True, corruption=CLEAN[0], severity=CLEAN[1], origin_id="")
    return manifest, skipped, f"new batch {source.description}"


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


def corrupt_test_split(dataset: Path, shards_dir: Path, cfg: ShiftParams, seed: int,
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
        image = decode_rgb(data)  # upright, as the models see the clean copy
        for corruption, severity in corruption_plan(origin["id"], cfg, seed):
            if (corruption, severity) == CLEAN:
                yield origin, data, corruption, severity
            else:
                out = corrupt(image, corruption, severity, corruption_seed(seed, origin["id"], corruption, severity))
                yield origin, encode_png(out), corruption, severity


def plot_current(current: Path, manifest: pd.DataFrame, target: Path) -> None:
    """Corruptions (rows) x severities (columns) of one image, so people can see what each level does."""
    origin = manifest["origin_id"].iloc[0]
    if not origin:  # a new batch: no ladder to show, show a sample instead
        rows = [[decode_rgb(d) for _, d in itertools.islice(iter_records(current), 8)]]
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
    return decode_rgb(read_image_bytes(current, rows.loc[key]))
