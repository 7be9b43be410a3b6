"""Image sources for ingest: each streams (source_path, label, bytes) records and lists what it skipped.

``open_source(spec, cfg)`` picks one from a source location (``source.location``, ``shift.source``):

    sklearn-digits            the embedded default (scikit-learn's handwritten digits)
    s3://bucket/prefix        ImageFolder layout in S3 (or any S3-compatible endpoint)
    torchvision:<Dataset>     OxfordIIITPet, Flowers102 (download when allowed), FakeData
    <file>.csv / .parquet     a table of (path or URI, label)
    <folder>                  ImageFolder layout on disk

Modules: base.py (the record, the skip list, confinement to allowed roots), digits.py, folder.py, table.py,
s3.py and torchvision.py (one source each).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.common.s3 import s3_client
from pipeline.data.sources.base import Confinement, Record, Skipped, Source, ordered_parallel
from pipeline.data.sources.digits import DigitsSource
from pipeline.data.sources.folder import FolderSource
from pipeline.data.sources.s3 import S3Source
from pipeline.data.sources.table import TableSource
from pipeline.data.sources.torchvision import TorchvisionSource

if TYPE_CHECKING:
    from pipeline.config import SourceParams

__all__ = ["Record", "Skipped", "Source", "open_source", "ordered_parallel"]


def open_source(spec: str, cfg: "SourceParams", unlabelled: bool = False) -> Source:
    """Build the source named by a location string (``source.location``, ``shift.source``, a batch to predict on).

    Args:
        spec: sklearn-digits, s3://bucket/prefix, torchvision:<Dataset>, a .csv/.parquet table, or a folder.
        cfg: the source params (digits size, S3 options, read workers, confinement, download permission).
        unlabelled: images to predict on: a flat folder or prefix, and a table without labels, are read too
            (label "" where there is none); sklearn-digits and torchvision: are training sets and refused.
    Returns:
        The source, ready to stream with ``records()``.
    """
    connect_s3 = partial(s3_client, cfg.s3_endpoint_url, cfg.s3_profile, profile_key="source.s3_profile",
                         retries=cfg.s3_retries, connections=cfg.read_workers)
    if unlabelled and (spec == "sklearn-digits" or spec.startswith("torchvision:")):
        raise ValueError(f"{spec}: a built-in training set, not a batch to predict on (a folder, a .csv/.parquet "
                         "table or s3://bucket/prefix)")
    if spec == "sklearn-digits":
        return DigitsSource(cfg.digits_size)
    max_bytes = int(cfg.max_file_mb * 2**20)
    if spec.startswith("s3://"):
        return S3Source(spec, connect_s3(), cfg.read_workers, max_bytes, unlabelled=unlabelled)
    if spec.startswith("torchvision:"):
        return TorchvisionSource(spec.removeprefix("torchvision:"), cfg.download_root, cfg.allow_download)
    if spec.lower().endswith((".csv", ".parquet")):
        table = Path(spec).expanduser()
        return TableSource(table, connect_s3, Confinement.of(table.parent, cfg.allowed_roots, cfg.max_file_mb),
                           cfg.read_workers, unlabelled=unlabelled)
    folder = Path(spec).expanduser()
    return FolderSource(folder, Confinement.of(folder, cfg.allowed_roots, cfg.max_file_mb), cfg.read_workers,
                        unlabelled=unlabelled)
