"""Building the current set: seeded test images under each corruption x severity (or one seeded pair per
image), clean copies kept, or a new batch from any source location taken as it is (its own group,
``batch:<name>``); and its figure.

The set is what evaluate and drift both score whole, so "accuracy on the shifted set" is one figure.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch

from pipeline.common.logs import progress
from pipeline.config import ShiftParams, SourceParams, ValidateParams
from pipeline.data.build import index_labels, pack_source
from pipeline.data.images import decode_rgb
from pipeline.data.pack import describe_image, store_image
from pipeline.data.plots import plot_image_grid
from pipeline.data.shards import ShardWriter, iter_records, read_image_bytes, read_manifest
from pipeline.data.sources import open_source
from pipeline.data.sources.base import Skipped
from pipeline.shift.corruptions import corrupt, corruption_seed, encode_png
from pipeline.validation.profile import ProfileSettings, image_refusal, profile_image

__all__ = ["CLEAN", "BATCH_PREFIX", "GATE_REFUSAL", "batch_group", "corruption_plan", "corrupt_test_split",
           "pack_batch", "plot_current"]
CLEAN = ("none", 0)
BATCH_PREFIX = "batch:"  # the corruption column of a new batch: its own group, never the clean control's
GATE_REFUSAL = "refused by the gate's rules"  # the skip reason of a batch image that breaks a per-image rule


def batch_group(source_uri: str) -> str:
    """The group label of a new batch: ``batch:`` and the last part of its folder, manifest or prefix."""
    name = source_uri.rstrip("/").rsplit("/", 1)[-1] or source_uri
    for suffix in (".csv", ".parquet"):
        name = name.removesuffix(suffix)
    return BATCH_PREFIX + name


def pack_batch(source_uri: str, reading: SourceParams, validate: ValidateParams, dataset_dir: Path, shard_bytes: int,
               classes: list[str]) -> tuple[pd.DataFrame, list[Skipped], str]:
    """A new batch from any source location, packed as a current set (corruption ``batch:<name>``, severity 0).

    The batch may be unlabelled (a flat folder or prefix, a table without labels: what a service sampled of the
    images it answered, pipeline/serving/samples.py): such rows have label "" and label_idx -1, which drift
    reads as "no labels" (it then skips the accuracy it cannot know) and evaluate refuses.

    No gate runs on a batch before drift and evaluate score it, so each image is held to the gate's
    per-image rules here (:func:`image_refusal`: it decodes within ``validate.max_pixels``, sides and mode
    in bounds): one that breaks a critical rule (an empty .jpg, a decompression bomb) is left out as one
    skipped row (:data:`GATE_REFUSAL`: ``<rule>: <why>``), and the batch goes on.

    Args:
        source_uri: the batch (a folder, a manifest, s3://...).
        reading: the source params (S3 endpoint, credentials profile, read workers, retries, confinement).
        validate: the gate's params (its per-image rules).
        dataset_dir: the (temporary) current-set directory.
        shard_bytes: target shard size.
        classes: the training classes (every label must be one of them).
    Returns:
        (manifest rows, what was skipped (refused images included), a description of the batch).
    """
    source = open_source(source_uri, reading, unlabelled=True)
    settings = ProfileSettings(max_pixels=validate.max_pixels, stats_max_side=validate.stats_max_side)

    def refusal(data: bytes) -> str | None:
        rule = image_refusal(profile_image(data, settings), validate)[0]
        return None if rule is None else f"{GATE_REFUSAL}: {rule}"

    manifest, skipped = pack_source(source, dataset_dir, shard_bytes, reading.max_unreadable_fraction, refusal)
    labelled = manifest["label"].astype(str) != ""
    manifest["label_idx"] = -1
    manifest.loc[labelled, "label_idx"] = index_labels(manifest.loc[labelled], classes, source.description)
    manifest = manifest.assign(split="test", in_budget=True, corruption=batch_group(source_uri), severity=0,
                               origin_id="")
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


def corrupt_test_split(dataset: os.PathLike, shards_dir: Path, cfg: ShiftParams, seed: int,
                        shard_bytes: int) -> pd.DataFrame:
    """Write the corrupted (and clean) test images, at most ``cfg.per_cell`` per cell, as shards.

    Args:
        dataset: the ingested dataset (its test split).
        shards_dir: where the current set's shards go.
        cfg: the shift params.
        seed: the common seed.
        shard_bytes: target shard size.
    Returns:
        The manifest rows (corruption, severity and origin_id per image).
    """
    rows = []
    plans = _capped_plans(read_manifest(dataset), cfg, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images: thread start-up costs more than it saves (measured 25x on blur)
    try:
        with ShardWriter(shards_dir, shard_bytes) as writer:
            for origin, data, corruption, severity in progress(_corrupted(dataset, plans, seed), desc="shift",
                                                                unit="img", total=sum(map(len, plans.values()))):
                fields = {k: origin[k] for k in ("source_path", "label", "label_idx")}
                rows.append(store_image(writer, f"{origin['id']}-{corruption}-{severity}", data,
                                        describe_image(data), **fields, split="test", in_budget=True,
                                        corruption=corruption, severity=severity, origin_id=origin["id"]))
    finally:
        torch.set_num_threads(threads)
    if not rows:
        raise ValueError(f"{dataset}: the test split is empty: nothing to corrupt")
    return pd.DataFrame(rows)


def _capped_plans(manifest: pd.DataFrame, cfg: ShiftParams, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Each test image's pairs, keeping at most ``per_cell`` images per cell. Images are taken in a
    seeded order, so in grid mode every cell holds the same images (a paired ladder of severities)."""
    ids = manifest.loc[manifest["split"] == "test", "id"].tolist()
    ids.sort(key=lambda i: (corruption_seed(seed, i, "pick", 0), i))
    filled: dict[tuple[str, int], int] = {}
    plans = {}
    for image_id in ids:
        pairs = [p for p in corruption_plan(image_id, cfg, seed)
                 if cfg.per_cell is None or filled.get(p, 0) < cfg.per_cell]
        for pair in pairs:
            filled[pair] = filled.get(pair, 0) + 1
        if pairs:
            plans[image_id] = pairs
    return plans


def _corrupted(dataset: os.PathLike, plans: dict[str, list[tuple[str, int]]],
               seed: int) -> Iterator[tuple[dict, bytes, str, int]]:
    ids = set(plans)
    for origin, data in iter_records(dataset, split="test"):
        if origin["id"] not in ids:
            continue
        image = decode_rgb(data)  # upright, as the models see the clean copy
        for corruption, severity in plans[origin["id"]]:
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
