"""A CSV or Parquet manifest of (path or URI, label): local paths (relative to the table) or s3:// URIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from pipeline.common.s3 import parse_s3_uri, s3_error
from pipeline.data.sources.base import Confinement, Record, Refused, Source, ordered_parallel
from pipeline.data.sources.s3 import get_object_bytes

__all__ = ["TableSource", "PATH_COLUMNS"]
PATH_COLUMNS = ("path", "uri", "source_path", "file")  # first one present names the image


class TableSource(Source):
    """Stream the images a table lists: local paths relative to the table (absolute ones and ``../`` only
    inside ``source.allowed_roots``), file:// and s3:// URIs. Failed reads are listed for the packer."""

    def __init__(self, table: str | Path, s3_client: Callable[[], Any], confinement: Confinement, workers: int = 8,
                 unlabelled: bool = False):
        table = Path(table).expanduser()
        super().__init__(f"manifest table {table}", unlabelled)
        if not table.is_file():
            raise FileNotFoundError(f"{table}: manifest table does not exist")
        frame = pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table, dtype=str)
        path_column = next((c for c in PATH_COLUMNS if c in frame.columns), None)
        if unlabelled and "label" not in frame.columns:
            frame = frame.assign(label="")
        if path_column is None or "label" not in frame.columns:
            raise ValueError(f"{table}: needs a 'label' column and one of {list(PATH_COLUMNS)} "
                             f"(columns found: {list(frame.columns)})")
        if frame.empty:
            raise ValueError(f"{table}: manifest table has no rows")
        self.table, self.workers = table, workers
        self.confinement = confinement
        self.entries = list(zip(frame[path_column].astype(str), frame["label"]))
        # One client made up front: boto3 client creation is not thread-safe.
        self._s3 = s3_client() if any(p.startswith("s3://") for p, _ in self.entries) else None

    def records(self) -> Iterator[Record]:
        for (path, label), data, error in ordered_parallel(self._fetch, self._labelled(), self.workers):
            if error is not None:
                self.skip_failed_read(path, error)
            else:
                yield Record(path, label, data)

    def _labelled(self) -> Iterator[tuple[str, str]]:
        for row, (path, label) in enumerate(self.entries, start=2):  # row 1 is the header
            label = "" if pd.isna(label) else str(label).strip()
            if not label and not self.unlabelled:
                self.skip(path, f"no label ({self.table} row {row})")
                continue
            if label:
                self.labels.add(label)
            yield path if "://" in path else str(self.table.parent / path), label

    def _fetch(self, entry: tuple[str, str]) -> bytes:
        path = entry[0]
        if path.startswith("s3://"):
            try:
                return get_object_bytes(self._s3, *parse_s3_uri(path), max_bytes=self.confinement.max_bytes)
            except Refused:
                raise
            except Exception as err:  # noqa: BLE001 - made one line naming the URI
                raise s3_error(path, err, self._s3.meta.endpoint_url) from None
        if "://" in path and not path.startswith("file://"):
            raise ValueError("unsupported URI scheme (local paths, file:// and s3:// are)")
        return self.confinement.read(Path(path.removeprefix("file://")))
