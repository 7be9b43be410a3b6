"""Generators of the bad (and good) image files the validation gate must handle, plus a dataset writer.

Every generator returns encoded bytes, built in memory and small: the 20000x20000 PNG is written row by
row through zlib, so it is a valid 400-megapixel image of about 50 KB that never exists decoded.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.shards import ShardWriter, write_classes, write_manifest

__all__ = [
    "Item", "encode", "noise_image", "good_png", "zero_byte", "text_as_png", "truncated_jpeg", "cmyk_jpeg",
    "png_16bit_gray", "png_16bit_rgb", "palette_png", "rgba_png", "grayscale_png", "exif_rotated_jpeg",
    "huge_png", "write_dataset",
]


class Item(NamedTuple):
    """One image of a test dataset."""

    id: str
    label: str
    split: str
    data: bytes


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """Encode a PIL image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_image(seed: int, size: int = 32, mode: str = "RGB") -> Image.Image:
    """A random image: distinct seeds give images far apart in perceptual hash."""
    channels = len(Image.new(mode, (1, 1)).getbands())
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def good_png(seed: int, size: int = 32) -> bytes:
    """An ordinary 8-bit RGB PNG."""
    return encode(noise_image(seed, size))


def zero_byte() -> bytes:
    """An empty file."""
    return b""


def text_as_png() -> bytes:
    """A text file that would be named .png."""
    return b"this is a text file, not a PNG\n"


def truncated_jpeg(seed: int = 0) -> bytes:
    """A JPEG cut off after 60% of its bytes: the header parses, the scan data ends early."""
    data = encode(noise_image(seed, 128), "JPEG", quality=90)
    return data[: int(len(data) * 0.6)]


def cmyk_jpeg(seed: int = 0) -> bytes:
    """A CMYK JPEG (print workflows)."""
    return encode(noise_image(seed, 32, "CMYK"), "JPEG", quality=95)


def png_16bit_gray(seed: int = 0, size: int = 32) -> bytes:
    """A 16-bit grayscale PNG (PIL mode I;16)."""
    pixels = np.random.default_rng(seed).integers(0, 65536, (size, size), dtype=np.uint16)
    return encode(Image.fromarray(pixels))


def png_16bit_rgb(seed: int = 0, size: int = 32) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one: built by hand)."""
    pixels = np.random.default_rng(seed).integers(0, 65536, (size, size, 3), dtype=np.uint16)
    return _png(size, size, bit_depth=16, color_type=2, rows=(row.astype(">u2").tobytes() for row in pixels))


def palette_png(seed: int = 0) -> bytes:
    """A palette (mode P) PNG."""
    return encode(noise_image(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))


def rgba_png(seed: int = 0) -> bytes:
    """An RGBA PNG with a transparent half."""
    image = noise_image(seed).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return encode(image)


def grayscale_png(seed: int = 0) -> bytes:
    """An 8-bit grayscale (mode L) PNG."""
    return encode(noise_image(seed, mode="L"))


def exif_rotated_jpeg(seed: int = 0, width: int = 48, height: int = 32, orientation: int = 6) -> bytes:
    """A JPEG stored ``width`` x ``height`` whose EXIF says to rotate it (6 = 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise_image(seed, max(width, height)).resize((width, height)), "JPEG", exif=exif.tobytes())


def huge_png(side: int = 20000) -> bytes:
    """A valid one-colour ``side`` x ``side`` PNG, compressed row by row (never decoded whole).

    One bit per pixel keeps the raw stream at 50 MB, so building it takes a fraction of a second.
    """
    row = bytes(-(-side // 8))
    return _png(side, side, bit_depth=1, color_type=0, rows=(row for _ in range(side)))


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: Iterable[bytes]) -> bytes:
    """Write a PNG from raw rows (filter type 0), streaming them through zlib."""
    compressor = zlib.compressobj(9)
    compressed = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", compressed) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_dataset(dataset_dir: Path, items: list[Item], classes: list[str]) -> Path:
    """Write a dataset directory (shards, manifest, classes.json) holding ``items`` exactly as given.

    Unlike ``tlops ingest``, nothing is probed, deduplicated or skipped: this is how a dataset made
    elsewhere (or damaged in storage) reaches the validation gate.

    Args:
        dataset_dir: where to write.
        items: the images.
        classes: class names (may include classes without images).
    Returns:
        ``dataset_dir``.
    """
    rows = []
    with ShardWriter(dataset_dir / "shards", 1 << 20) as writer:
        for item in items:
            shard, offset, length = writer.add(f"{item.id}.img", item.data)
            rows.append({"id": item.id, "source_path": f"{item.label}/{item.id}.img", "label": item.label,
                         "label_idx": classes.index(item.label) if item.label in classes else -1,
                         "split": item.split, "sha256": hashlib.sha256(item.data).hexdigest(), "width": 0,
                         "height": 0, "mode": "", "bytes": len(item.data), "shard": shard, "offset": offset,
                         "length": length, "in_budget": True})
    write_manifest(dataset_dir, pd.DataFrame(rows))
    write_classes(dataset_dir, classes)
    return dataset_dir
