"""Turn a source into a dataset directory: pack, check classes, index labels, write manifest + splits.json.

Shared by `tlops ingest` (which adds hash splits and the label budget) and `tlops shift` (a new batch
taken as the "current" set).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd
from PIL import Image

from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.data.pack import pack_records
from pipeline.data.plots import plot_class_counts, plot_image_grid
from pipeline.data.shards import SHARDS_DIR, SPLITS, ShardImageDataset, read_manifest, write_classes, write_manifest
from pipeline.data.sources.base import Record, Skipped, Source
from pipeline.data.splits import split_summary

__all__ = ["pack_source", "check_class_sizes", "index_labels", "write_dataset", "over_pixel_limit",
           "write_ingest_report"]
log = get_logger(__name__)
_SAMPLES_PER_CLASS = 8
_MAX_CLASSES_SHOWN = 20


def pack_source(source: Source, dataset_dir: Path, shard_bytes: int, max_unreadable_fraction: float = 0.0,
                refusal: Callable[[bytes], str | None] | None = None) -> tuple[pd.DataFrame, list[Skipped]]:
    """Stream a source into shards under ``dataset_dir``.

    A model trained on part of the data must not pass as trained on all of it: any refused file
    (outside the declared roots, not a regular file, over the size cap) fails the ingest, and so do
    read failures above ``max_unreadable_fraction`` of the files tried; both name the files.

    Args:
        source: the opened source.
        dataset_dir: the (temporary) dataset directory.
        shard_bytes: target shard size.
        max_unreadable_fraction: ``source.max_unreadable_fraction``.
        refusal: why an image's bytes are not stored (None: they are), e.g. the gate's per-image rules for a
            drift-check batch; a refused image is skipped with that reason, and packing goes on.
    Returns:
        (manifest rows so far, everything skipped by the source and the packer).
    Raises:
        ValueError: no images, refused files, or too many unreadable ones.
    """
    records = source.records() if refusal is None else _screened(source, refusal)
    rows, packer_skipped = pack_records(records, dataset_dir / SHARDS_DIR, shard_bytes)
    skipped = source.skipped + packer_skipped
    refused = [s for s in skipped if s.kind == "refused"]
    if refused:
        raise ValueError(f"{source.description}: {len(refused)} file(s) refused{_listed(refused)}")
    unreadable = [s for s in skipped if s.kind == "unreadable"]
    tried = len(rows) + len(unreadable)
    if unreadable and len(unreadable) > max_unreadable_fraction * tried:
        raise ValueError(f"{source.description}: {len(unreadable)} of {tried} file(s) could not be read "
                         f"({len(unreadable) / tried:.1%} > source.max_unreadable_fraction = "
                         f"{max_unreadable_fraction:g}){_listed(unreadable)}")
    if not rows:
        examples = {s.kind: s for s in reversed(skipped)}  # first example of each kind
        raise ValueError(f"{source.description}: no images found ({len(skipped)} item(s) skipped)"
                         + _listed(list(examples.values())[::-1]))
    return pd.DataFrame(rows), skipped


def _screened(source: Source, refusal: Callable[[bytes], str | None]) -> Iterator[Record]:
    """The source's records that ``refusal`` lets through; the others become skips naming them."""
    for record in source.records():
        reason = refusal(record.data)
        if reason is None:
            yield record
        else:
            source.skip(record.source_path, reason)


def _listed(skipped: list[Skipped], most: int = 5) -> str:
    more = f"\n  ... and {len(skipped) - most} more" if len(skipped) > most else ""
    return "".join(f"\n  e.g. {s.path}: {s.reason}" for s in skipped[:most]) + more


def check_class_sizes(manifest: pd.DataFrame, declared: set[str], minimum: int, skipped: list[Skipped],
                      where: str) -> None:
    """Raise naming every class (declared by the source or seen) with fewer than ``minimum`` images.

    Args:
        manifest: the packed rows (label, source_path).
        declared: classes the source declares (e.g. its class folders).
        minimum: the least images a class may have.
        skipped: what was skipped, to say why a class ended up empty.
        where: the source, for the message.
    """
    counts = manifest["label"].value_counts()
    problems = []
    for label in sorted(declared | set(counts.index)):
        count = int(counts.get(label, 0))
        if count >= minimum:
            continue
        if count:
            paths = manifest.loc[manifest["label"] == label, "source_path"].tolist()[:3]
            problems.append(f"class '{label}' has only {count} image(s): {', '.join(paths)}")
        else:
            why = next((f"; e.g. {s.path}: {s.reason}" for s in skipped if f"/{label}/" in s.path), "")
            problems.append(f"class '{label}' has no usable images{why}")
    if problems:
        raise ValueError(f"{where}: every class needs at least {minimum} images "
                         "(ingest.min_images_per_class):\n" + "\n".join(problems))


def index_labels(manifest: pd.DataFrame, classes: Sequence[str], where: str) -> pd.Series:
    """Return each row's label index in ``classes``; an unknown label is an error naming an example."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = manifest.loc[~manifest["label"].isin(list(index))]
    if not unknown.empty:
        row = unknown.iloc[0]
        raise ValueError(f"{where}: label '{row['label']}' (e.g. {row['source_path']}) is not one of the "
                         f"dataset's classes {list(classes)}")
    return manifest["label"].map(index).astype(int)


def write_dataset(dataset_dir: Path, manifest: pd.DataFrame, classes: Sequence[str]) -> dict:
    """Write manifest.parquet, classes.json and splits.json; returns the splits summary."""
    write_manifest(dataset_dir, manifest)
    write_classes(dataset_dir, classes)
    summary = split_summary(manifest, list(classes))
    write_json(dataset_dir / SPLITS, summary)
    return summary


def over_pixel_limit(manifest: pd.DataFrame, max_pixels: int) -> pd.Series:
    """Mask of the rows whose header size (width x height) is over ``max_pixels`` (``validate.max_pixels``):
    never decoded at ingest, where a 9600x9600 PNG of a few KB took gigabytes; the gate's ``decodes``
    check refuses them by name, from their header too."""
    return manifest["width"].astype("int64") * manifest["height"].astype("int64") > max_pixels


def _decodable(samples: ShardImageDataset, rows: Iterable[int]) -> Iterator[Image.Image]:
    """The images of ``rows`` that decode; judging the others (truncated, undecodable) is the gate's job."""
    for i in rows:
        try:
            yield samples[i][0]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            log.info("sample figure leaves out row %s: %s", i, err)


def write_ingest_report(report_dir: Path, description: str, summary: dict, skipped: list, dataset: Path,
                        max_pixels: int) -> None:
    """Write ingest_report.json (every skipped item with its reason, every image over the pixel limit) and
    the two figures.

    Args:
        report_dir: output folder.
        description: the source, in words.
        summary: the splits summary.
        skipped: the Skipped items.
        dataset: the written dataset (for sample images).
        max_pixels: ``validate.max_pixels``: larger images are listed and left out of the samples, undecoded.
    """
    manifest = read_manifest(dataset)
    over = manifest[over_pixel_limit(manifest, max_pixels)]
    for row in over.itertuples():
        log.warning("%s: %dx%d = %s pixels, over validate.max_pixels = %s: stored undecoded, for the validation "
                    "gate to refuse", row.source_path, row.width, row.height, f"{row.width * row.height:,}",
                    f"{max_pixels:,}")
    write_json(report_dir / "ingest_report.json", {
        "source": description, "splits": summary,
        "skipped_by_reason": Counter(s.kind for s in skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "over_pixel_limit": [{"path": row.source_path, "pixels": int(row.width * row.height),
                              "reason": f"{row.width}x{row.height} pixels, over validate.max_pixels = {max_pixels:,}"}
                             for row in over.itertuples()]})
    plot_class_counts(summary, report_dir / "class_counts.png", f"images per class and split: {description}")
    samples = ShardImageDataset(dataset, split="train")
    classes = samples.classes[:_MAX_CLASSES_SHOWN]
    small = ~over_pixel_limit(samples.rows, max_pixels)
    grid = []
    for label_idx in range(len(classes)):
        rows = samples.rows.index[(samples.rows["label_idx"] == label_idx) & small]
        grid.append(list(itertools.islice(_decodable(samples, rows), _SAMPLES_PER_CLASS)))
    samples.close()
    plot_image_grid(grid, classes, [], report_dir / "samples.png", f"train samples per class: {description}")
