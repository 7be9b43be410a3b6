"""The dataset directory: uncompressed tar shards of encoded images plus one manifest table.

Layout (docs/CONTRACTS.md)::

    <dataset>/manifest.parquet   one row per image (MANIFEST_COLUMNS)
    <dataset>/classes.json       class names in label-index order
    <dataset>/shards/shard-00000.tar ...
    <dataset>/splits.json        split sizes and per-class counts

DVC tracks a handful of shards instead of one file per image. Each manifest row records the shard,
byte offset and length of its image inside the tar, so readers seek straight to it (random access)
or walk the shards in order (streaming) without unpacking anything to disk. Shards are byte-for-byte
reproducible (fixed tar header fields), so the same images give the same DVC hashes.

Every reader takes the dataset as a directory path or as a :class:`GatedDataset` (the directory plus the
ids the validation gate quarantined, from pipeline/stages/protocol.py): what a read leaves out is the value
it is given, never an earlier call in the process.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
from PIL import Image

from pipeline.data.images import decode_rgb
from pipeline.common.io import atomic_path, read_json, write_json

__all__ = [
    "MANIFEST", "CLASSES", "SPLITS", "SHARDS_DIR", "MANIFEST_COLUMNS", "SHIFT_COLUMNS",
    "GatedDataset", "ShardWriter", "write_manifest", "write_classes",
    "read_manifest", "read_classes", "read_splits", "iter_records", "read_image_bytes",
    "open_image", "verify_dataset", "ShardImageDataset", "train_in_budget", "dataset_version",
]

MANIFEST = "manifest.parquet"
CLASSES = "classes.json"
SPLITS = "splits.json"
SHARDS_DIR = "shards"
MANIFEST_COLUMNS = ("id", "source_path", "label", "label_idx", "split", "sha256", "width", "height", "mode",
                    "bytes", "shard", "offset", "length", "in_budget")
SHIFT_COLUMNS = ("corruption", "severity", "origin_id")  # added by a shift/"current" set
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class GatedDataset:
    """A dataset directory as the validation gate passed it: every reader here leaves out ``quarantined``.

    Path-like (``os.fspath`` and ``str`` give the directory), so it goes wherever a dataset directory goes and
    the readers of this module see its quarantine. Pass it on as it is: ``Path(gated)`` is a plain path again,
    which reads every row. A plain path is the dataset as ingested (nothing left out).
    """

    directory: Path
    quarantined: frozenset[str] = frozenset()  # image ids (validate's metrics.json ``quarantine``)

    def __fspath__(self) -> str:
        return os.fspath(self.directory)

    def __str__(self) -> str:
        return str(self.directory)


class ShardWriter:
    """Append encoded images to numbered tar shards of about ``shard_bytes`` each.

    Use as a context manager; :meth:`add` returns where the image landed, for the manifest.
    """

    def __init__(self, shards_dir: str | os.PathLike, shard_bytes: int):
        if shard_bytes <= 0:
            raise ValueError(f"shard size must be > 0 bytes, got {shard_bytes}")
        self.shards_dir = Path(shards_dir)
        self.shard_bytes = int(shard_bytes)
        self.shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._members: set[str] = set()
        self.shards_dir.mkdir(parents=True, exist_ok=True)

    def add(self, member: str, data: bytes) -> tuple[str, int, int]:
        """Store one encoded image.

        Args:
            member: file name inside the tar (unique within the dataset, at most 100 characters).
            data: the encoded image bytes, stored as they are.
        Returns:
            (shard file name, byte offset of the data in that shard, data length).
        """
        if member in self._members:
            raise ValueError(f"shard member {member!r} written twice (ids must be unique)")
        if self._tar is None or (self._tar.offset > 0 and self._tar.offset + _BLOCK + len(data) > self.shard_bytes):
            self._roll()
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed fields: reproducible shard bytes
        self._tar.addfile(info, io.BytesIO(data))
        self._members.add(member)
        # addfile leaves .offset after the data padded to whole blocks; the data starts that far back.
        padded = -(-len(data) // _BLOCK) * _BLOCK
        return self.shards[-1], self._tar.offset - padded, len(data)

    def close(self) -> list[str]:
        """Finish the last shard; returns the shard file names in order."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        return list(self.shards)

    def _roll(self) -> None:
        self.close()
        name = f"shard-{len(self.shards):05d}.tar"
        self.shards.append(name)
        self._tar = tarfile.open(self.shards_dir / name, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (the current shard, closed by close())

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_manifest(dataset_dir: str | os.PathLike, manifest: pd.DataFrame) -> Path:
    """Check the manifest columns and write ``manifest.parquet`` atomically.

    Args:
        dataset_dir: the dataset directory.
        manifest: one row per image with at least MANIFEST_COLUMNS (written first, in that order).
    Returns:
        The manifest path.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    if manifest["id"].duplicated().any():
        raise ValueError(f"manifest ids not unique: {manifest['id'][manifest['id'].duplicated()].head(5).tolist()}")
    target = Path(dataset_dir) / MANIFEST
    ordered = [*MANIFEST_COLUMNS, *(c for c in manifest.columns if c not in MANIFEST_COLUMNS)]
    with atomic_path(target, suffix=".parquet") as tmp:
        manifest[ordered].reset_index(drop=True).to_parquet(tmp, index=False)
    return target


def write_classes(dataset_dir: str | os.PathLike, classes: Sequence[str]) -> Path:
    """Write ``classes.json`` (class names in label-index order)."""
    return write_json(Path(dataset_dir) / CLASSES, list(classes))


def read_manifest(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """Read the manifest table of a dataset directory.

    Every reader of this module selects its rows here, so a GatedDataset's quarantine holds for all of them.

    Args:
        dataset_dir: the dataset directory written by ingest or shift, or a GatedDataset of it.
    Returns:
        One row per image (MANIFEST_COLUMNS, plus SHIFT_COLUMNS for a shift set), without the rows a
        GatedDataset quarantines.
    """
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (is {dataset_dir} a dataset written by `tlops ingest`?)")
    manifest = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}")
    if isinstance(dataset_dir, GatedDataset) and dataset_dir.quarantined:
        manifest = manifest[~manifest["id"].isin(dataset_dir.quarantined)].reset_index(drop=True)
    return manifest


def train_in_budget(manifest: pd.DataFrame, where: str | os.PathLike = "the dataset") -> pd.DataFrame:
    """The training rows inside the label budget (``ingest.budget_per_class`` / ``budget_fraction``).

    Every stage that trains or scores on "the labels the run has" reads them here, so a budgeted run
    never sees a label it was told it does not have.

    Raises:
        ValueError: no training image is inside the budget.
    """
    rows = manifest[(manifest["split"] == "train") & manifest["in_budget"].astype(bool)]
    if rows.empty:
        raise ValueError(f"{where}: no training images inside the label budget")
    return rows


def dataset_version(image_sha256: Sequence[str]) -> str:
    """Hash of the image hashes of the rows used, in order: a data version for caches and model cards."""
    return hashlib.sha256("\n".join(image_sha256).encode()).hexdigest()


def read_classes(dataset_dir: str | os.PathLike) -> list[str]:
    """Return the class names of a dataset in label-index order."""
    path = Path(dataset_dir) / CLASSES
    classes = read_json(path)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return classes


def read_splits(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Return ``splits.json``: split sizes and per-class counts."""
    return read_json(Path(dataset_dir) / SPLITS)


def iter_records(dataset_dir: str | os.PathLike, split: str | None = None) -> Iterator[tuple[dict, bytes]]:
    """Stream (manifest row, image bytes) in storage order, one shard open at a time.

    Args:
        dataset_dir: the dataset directory, or a GatedDataset (its quarantined images are never read).
        split: only rows of this split ("train", "val", "test"); None for all.
    Returns:
        An iterator of (row as a dict, encoded image bytes).
    """
    manifest = _select_split(read_manifest(dataset_dir), split, dataset_dir)
    shards = Path(dataset_dir) / SHARDS_DIR
    for shard, rows in manifest.sort_values(["shard", "offset"]).groupby("shard", sort=True):
        with open(_shard_path(shards, shard), "rb") as fh:
            for row in rows.to_dict("records"):
                fh.seek(row["offset"])
                yield row, _read_exact(fh, row)


def read_image_bytes(dataset_dir: str | os.PathLike, row: dict | pd.Series) -> bytes:
    """Return the encoded bytes of one image (random access by its manifest row)."""
    with open(_shard_path(Path(dataset_dir) / SHARDS_DIR, row["shard"]), "rb") as fh:
        fh.seek(int(row["offset"]))
        return _read_exact(fh, row)


def open_image(dataset_dir: str | os.PathLike, image_id: str) -> Image.Image:
    """Return one image of a dataset by id, decoded as the models see it (upright 8-bit RGB).

    Args:
        dataset_dir: the dataset directory, or a GatedDataset (a quarantined id is unknown).
        image_id: the manifest id.
    Returns:
        The PIL image.
    """
    manifest = read_manifest(dataset_dir)
    hits = manifest[manifest["id"] == image_id]
    if hits.empty:
        raise KeyError(f"{Path(dataset_dir) / MANIFEST}: no image with id {image_id!r}")
    return decode_rgb(read_image_bytes(dataset_dir, hits.iloc[0]))


def verify_dataset(dataset_dir: str | os.PathLike) -> int:
    """Check every image's bytes against its manifest sha256; returns the count checked."""
    count = 0
    for row, data in iter_records(dataset_dir):
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise ValueError(f"{Path(dataset_dir) / SHARDS_DIR / row['shard']}: image {row['id']} "
                             f"(from {row['source_path']}) does not match its sha256")
        count += 1
    return count


class ShardImageDataset:
    """A map-style dataset of (transform(RGB PIL image), label_idx) read straight from the shards.

    torch's DataLoader takes it as it is (``__len__`` and ``__getitem__``); it does not subclass torch's Dataset so
    that reading the shards never imports torch (ingest, validate and card run without it).

    Shard files are opened lazily and per process, so DataLoader workers (fork or spawn) never
    share a file offset. ``rows`` is the selected manifest slice, in item order: a GatedDataset's
    quarantined images are not among them (asking for one by id is an unknown id).
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str | None = None,
                 transform: Callable[[Image.Image], Any] | None = None, ids: Sequence[str] | None = None):
        self.dataset_dir = Path(dataset_dir)
        self.classes = read_classes(dataset_dir)
        rows = _select_split(read_manifest(dataset_dir), split, dataset_dir)
        if ids is not None:
            rows = _select_ids(rows, ids, self.dataset_dir)
        self.rows = rows.reset_index(drop=True)
        self.labels = self.rows["label_idx"].astype(int).tolist()
        self.transform = transform
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        row = self.rows.iloc[index]
        fh = self._handle(row["shard"])
        fh.seek(int(row["offset"]))
        image = decode_rgb(_read_exact(fh, row))
        return (self.transform(image) if self.transform else image), self.labels[index]

    def close(self) -> None:
        """Close the shard files this process opened."""
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def _handle(self, shard: str):
        if os.getpid() != self._pid:  # a forked worker: never reuse the parent's file objects
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = open(_shard_path(self.dataset_dir / SHARDS_DIR, shard), "rb")  # noqa: SIM115 (cached per worker, closed by close())
        return self._handles[shard]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def _select_split(manifest: pd.DataFrame, split: str | None, dataset_dir: Any) -> pd.DataFrame:
    if split is None:
        return manifest
    present = sorted(manifest["split"].unique())
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r} is not one of train, val, test (present in {dataset_dir}: {present})")
    return manifest[manifest["split"] == split]


def _select_ids(rows: pd.DataFrame, ids: Sequence[str], dataset_dir: Path) -> pd.DataFrame:
    indexed = rows.set_index("id", drop=False)
    unknown = [i for i in ids if i not in indexed.index]
    if unknown:
        raise KeyError(f"{dataset_dir / MANIFEST}: {len(unknown)} ids not in the selection, e.g. {unknown[:5]}")
    return indexed.loc[list(ids)]


def _shard_path(shards: Path, shard: str) -> Path:
    path = shards / shard
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard missing (run `dvc pull` or re-run `tlops ingest`)")
    return path


def _read_exact(fh, row: dict | pd.Series) -> bytes:
    length = int(row["length"])
    data = fh.read(length)
    if len(data) != length:
        raise ValueError(f"{fh.name}: truncated at offset {row['offset']} (image {row['id']}: "
                         f"wanted {length} bytes, got {len(data)})")
    return data
