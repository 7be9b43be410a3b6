"""Pack streamed images into tar shards, one manifest row each: header probe, hash, dedupe, skip list.

Only the image header is read here (format, size, mode): a full decode of every image is the
validation stage's job. A file named as an image (or with no extension) whose bytes are no image (empty,
text, a cut-off download) is stored anyway, for the validation gate to judge by name, rather than
dropped here where the gate would never see it; other files (notes.txt, labels.json) are skipped.
Nothing is dropped silently: every skip carries its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image, UnidentifiedImageError

from pipeline.common.logs import get_logger, progress
from pipeline.data.shards import ShardWriter
from pipeline.data.sources.base import Record, Skipped

__all__ = ["describe_image", "store_image", "pack_records", "DuplicateLabelError"]
log = get_logger(__name__)
_EXTENSIONS = {"JPEG": "jpg", "TIFF": "tif"}
_MAX_LISTED = 10


class DuplicateLabelError(ValueError):
    """The same image (same bytes) appears under two different labels."""


def describe_image(data: bytes) -> dict:
    """Read an encoded image's header.

    Args:
        data: encoded image bytes.
    Returns:
        sha256, width, height, mode, format and bytes of the image.
    Raises:
        ValueError: the bytes are not an image PIL can identify.
    """
    try:
        with _header_only(), Image.open(io.BytesIO(data)) as image:
            width, height, mode, fmt = image.width, image.height, image.mode, image.format
    except UnidentifiedImageError:
        raise ValueError(f"not an image (no image format recognised in {len(data)} bytes)") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"not an image ({err})") from None
    return {"sha256": hashlib.sha256(data).hexdigest(), "width": width, "height": height, "mode": mode,
            "format": fmt, "bytes": len(data)}


@contextlib.contextmanager
def _header_only() -> Iterator[None]:
    """Lift PIL's decompression-bomb check while only the header is read (no pixel is decoded here), so an
    over-limit image is stored and judged by the validation gate (``validate.max_pixels``), by name,
    instead of crashing ingest. Ingest reads headers in one thread, so the global is safe to swap."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def store_image(writer: ShardWriter, image_id: str, data: bytes, info: dict, **fields) -> dict:
    """Write one image into the shards and return its manifest row.

    Args:
        writer: the open shard writer.
        image_id: the row id (unique in the dataset); the tar member is ``<id>.<ext>``.
        data: encoded bytes, stored unchanged.
        info: :func:`describe_image` of ``data``.
        fields: further columns (source_path, label, ...).
    Returns:
        The manifest row.
    """
    extension = _EXTENSIONS.get(info["format"], str(info["format"]).lower())
    shard, offset, length = writer.add(f"{image_id}.{extension}", data)
    columns = {k: info[k] for k in ("sha256", "width", "height", "mode", "bytes")}
    return {"id": image_id, **fields, **columns, "shard": shard, "offset": offset, "length": length}


def pack_records(records: Iterable[Record], shards_dir: Path, shard_bytes: int,
                 total: int | None = None) -> tuple[list[dict], list[Skipped]]:
    """Store every identifiable, distinct image of a stream; skip the rest with reasons.

    The id of an image is the first 16 hex digits of its sha256. The same bytes twice under one label
    are stored once (the repeat is skipped); under two labels they are an error naming both paths.

    Args:
        records: the source's stream.
        shards_dir: folder for the tar shards.
        shard_bytes: target shard size.
        total: expected count, for the progress bar.
    Returns:
        (manifest rows without split columns, skipped items).
    Raises:
        DuplicateLabelError: listing every image found under two labels.
    """
    rows: list[dict] = []
    skipped: list[Skipped] = []
    first_seen: dict[str, tuple[str, str]] = {}  # sha256 -> (source path, label)
    conflicts: list[str] = []
    with ShardWriter(shards_dir, shard_bytes) as writer:
        for record in progress(records, desc="ingest", total=total, unit="img"):
            try:
                info = describe_image(record.data)
            except ValueError as err:
                if not _named_as_image(record.source_path):
                    _skip(skipped, record.source_path, f"{err}; its extension is no image format")
                    continue
                log.warning("%s: %s; stored for the validation gate", record.source_path, err)
                # distinct ids, no dedupe: ten empty files under two labels are ten failures, not a conflict
                image_id = hashlib.sha256(record.source_path.encode() + record.data).hexdigest()[:16]
                rows.append(store_image(writer, image_id, record.data, _undecodable(record.data),
                                        source_path=record.source_path, label=record.label))
                continue
            seen = first_seen.setdefault(info["sha256"], (record.source_path, record.label))
            if seen[0] != record.source_path:
                if seen[1] != record.label:
                    conflicts.append(f"{record.source_path} (label '{record.label}') is the same image as "
                                     f"{seen[0]} (label '{seen[1]}')")
                else:
                    _skip(skipped, record.source_path, f"duplicate of {seen[0]}")
                continue
            rows.append(store_image(writer, info["sha256"][:16], record.data, info,
                                    source_path=record.source_path, label=record.label))
    if conflicts:
        more = f"\n... and {len(conflicts) - _MAX_LISTED} more" if len(conflicts) > _MAX_LISTED else ""
        raise DuplicateLabelError(f"{len(conflicts)} image(s) appear under two labels:\n"
                                  + "\n".join(conflicts[:_MAX_LISTED]) + more)
    return rows, skipped


def _named_as_image(path: str) -> bool:
    """The file's name says image: an extension PIL knows, or none at all."""
    suffix = Path(path.rsplit("/", 1)[-1]).suffix.lower()
    return not suffix or suffix in Image.registered_extensions()


def _undecodable(data: bytes) -> dict:
    """The manifest columns of bytes that are no image: their hash and size, no geometry."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "width": 0, "height": 0, "mode": "", "format": "bin",
            "bytes": len(data)}


def _skip(skipped: list[Skipped], path: str, reason: str) -> None:
    log.warning("skipped %s: %s", path, reason)
    skipped.append(Skipped(path, reason))
