"""Per-image profile: decode one image's bytes into one row of descriptors, in parallel and streaming.

Each row records whether the image decodes (and why not), its format, mode, channels, bit depth, size,
EXIF orientation, file size, sha256, perceptual hash, brightness, contrast, blur and clipped pixels,
plus the conversion that turns it into the RGB the models take. A bad image gives an error row, never
a crash. Images stream through a bounded window of worker tasks, so only a few chunks of encoded bytes
and one decoded image per worker are in memory at a time; rows are kept columnar (Arrow).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import warnings
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image
from scipy import ndimage

from pipeline.common.logs import get_logger, progress
from pipeline.common.pools import process_pool
from pipeline.common.threads import current as current_threads
from pipeline.data.images import SIXTEEN_BIT_MODES, to_model_input

if TYPE_CHECKING:  # the profiling workers import this module: no params schema in them
    from pipeline.config import ValidateParams

__all__ = ["ProfileSettings", "PROFILE_SCHEMA", "profile_image", "admit_image", "image_refusal", "profile_chunk",
           "profile_records", "resolve_workers"]
log = get_logger(__name__)

PROFILE_SCHEMA = pa.schema([
    ("id", pa.string()), ("source_path", pa.string()), ("label", pa.string()), ("split", pa.string()),
    ("decode_ok", pa.bool_()), ("error", pa.string()),
    ("format", pa.string()), ("mode", pa.string()), ("channels", pa.int64()), ("bit_depth", pa.int64()),
    ("width", pa.int64()), ("height", pa.int64()), ("aspect_ratio", pa.float64()),
    ("exif_orientation", pa.int64()), ("file_bytes", pa.int64()), ("sha256", pa.string()),
    ("phash", pa.string()), ("brightness_mean", pa.float64()), ("brightness_std", pa.float64()),
    ("contrast", pa.float64()), ("blur_var", pa.float64()), ("saturated_frac", pa.float64()),
    ("conversion", pa.string()),
])
_MANIFEST_KEYS = ("id", "source_path", "label", "split")
_EXIF_ORIENTATION = 0x0112
_MODE_BITS = {"1": 1, "I": 32, "F": 32, **{mode: 16 for mode in SIXTEEN_BIT_MODES}}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ProfileSettings:
    """Limits of the profile (from params.validate)."""

    max_pixels: int = 64_000_000  # decompression-bomb guard: width * height above this is an error
    stats_max_side: int = 512  # images are reduced to this side before brightness/blur/phash
    chunk_size: int = 64  # images per worker task


class ImageRejected(ValueError):
    """The bytes are not a usable image; the message says why in words."""


def profile_image(data: bytes, settings: ProfileSettings = ProfileSettings()) -> dict[str, Any]:
    """Decode one image's bytes and describe it.

    Args:
        data: the encoded file bytes.
        settings: the pixel limit and the side statistics are computed at.
    Returns:
        One profile row without the manifest fields: ``decode_ok`` False with ``error`` set when the
        bytes are not a decodable image, else every descriptor of :data:`PROFILE_SCHEMA`.
    """
    row, rgb, conversion = _decoded(data, settings, draft_side=settings.stats_max_side)
    if rgb is not None:
        row.update(conversion=conversion, **_pixel_stats(rgb, settings.stats_max_side))
    return row


def admit_image(data: bytes, settings: ProfileSettings = ProfileSettings()
                ) -> tuple[dict[str, Any], Image.Image | None]:
    """What :func:`image_refusal` reads of one image (decode_ok, error, width, height, mode), and its upright RGB
    pixels as ``tlops predict`` feeds them to a model (pipeline.data.images.decode_rgb); None when it does not
    decode. The pixel statistics of :func:`profile_image` are skipped: a service answering one image at a time
    needs only the gate's per-image rules."""
    row, rgb, _ = _decoded(data, settings)
    return row, rgb


def _decoded(data: bytes, settings: ProfileSettings, draft_side: int | None = None
             ) -> tuple[dict[str, Any], Image.Image | None, str | None]:
    """The header row (``decode_ok`` set), the upright 8-bit RGB image and what its conversion changed; the image
    is None, with ``error`` in the row, when it does not decode or convert."""
    row, image = _open_checked(data, settings, draft_side)
    if image is None:
        return row, None, None
    try:
        rgb, conversion = to_model_input(image, row["exif_orientation"], row["bit_depth"])
    except (ValueError, OSError) as err:
        row["error"] = f"decodes as mode {image.mode} but cannot be converted to RGB: {err}"
        return row, None, None
    row["decode_ok"] = True
    return row, rgb, conversion


def _open_checked(data: bytes, settings: ProfileSettings, draft_side: int | None = None
                  ) -> tuple[dict[str, Any], Image.Image | None]:
    """The image decoded within the pixel limit (a JPEG at a reduced scale near ``draft_side`` when given), and the
    row of its header fields; None with ``error`` in the row when it does not decode."""
    row: dict[str, Any] = {"decode_ok": False, "file_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        with _pixel_limit(settings.max_pixels):
            image = _open_header(data, row, settings.max_pixels)
            if draft_side and image.format == "JPEG":  # decode JPEGs at a reduced scale: fewer pixels in memory
                image.draft(image.mode, (draft_side, draft_side))
            image.load()
    except ImageRejected as err:
        row["error"] = str(err)
        return row, None
    # PIL's format plugins raise many exception types (OSError, SyntaxError, struct.error, ...) on
    # corrupt input: any of them means "does not decode", recorded with its text.
    except Exception as err:  # noqa: BLE001
        row["error"] = f"does not decode: {type(err).__name__}: {err}"
        return row, None
    return row, image


def image_refusal(row: dict[str, Any], cfg: "ValidateParams") -> tuple[str | None, str | None]:
    """(refusal, warning) of one profiled image by the gate's per-image rules and their severities: it must
    decode (within ``max_pixels``), its sides must be within bounds and its mode accepted. Used wherever
    images reach a model without passing the gate (``tlops predict``, a drift-check batch)."""
    if not row["decode_ok"]:
        return f"decodes: {row['error']}", None
    broken = []
    for check, column in (("width_in_bounds", "width"), ("height_in_bounds", "height")):
        if not cfg.min_side <= row[column] <= cfg.max_side:
            broken.append((check, f"{check}: {column} {row[column]} px outside [{cfg.min_side}, {cfg.max_side}] "
                                  "(validate.min_side / max_side)"))
    if row["mode"] not in cfg.accepted_modes:
        broken.append(("mode_convertible", f"mode_convertible: mode {row['mode']} not in validate.accepted_modes"))
    critical = [text for check, text in broken if getattr(cfg.severity, check) == "critical"]
    warnings = [text for check, text in broken if getattr(cfg.severity, check) != "critical"]
    return ("; ".join(critical) or None), ("; ".join(warnings) or None)


def _open_header(data: bytes, row: dict[str, Any], max_pixels: int) -> Image.Image:
    """Open the image (header only), refuse it above ``max_pixels`` and fill the header fields of ``row``.

    The size is checked here as well as by PIL's guard (``_pixel_limit``): PIL's reads a process-wide setting
    that threads admitting images side by side (``tlops serve``) would change under each other."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageRejected(f"not an image in any format PIL reads (first bytes {data[:8]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(f"decompression-bomb guard: more than validate.max_pixels = {Image.MAX_IMAGE_PIXELS:,} "
                            f"pixels (PIL: {err})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"decompression-bomb guard: {width} x {height} = {width * height:,} pixels, more than "
                            f"validate.max_pixels = {max_pixels:,}")
    orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the upright image is height x width
        width, height = height, width
    row.update(format=image.format, mode=image.mode, channels=len(image.getbands()),
               bit_depth=_bit_depth(image, data), width=width, height=height,
               aspect_ratio=width / height if height else None, exif_orientation=orientation)
    return image


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make PIL refuse images above ``max_pixels`` (its warning band becomes an error too)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _bit_depth(image: Image.Image, data: bytes) -> int:
    """Bits per channel as stored; PNG's IHDR is read directly (PIL loads 16-bit RGB PNGs as 8-bit)."""
    if image.format == "PNG" and data[:8] == _PNG_SIGNATURE and len(data) > 24:
        return int(data[24])
    return _MODE_BITS.get(image.mode, 8)


def _pixel_stats(rgb: Image.Image, max_side: int) -> dict[str, Any]:
    """Brightness, contrast, blur, clipping and perceptual hash of an RGB image reduced to ``max_side``."""
    if max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side))
    gray_image = rgb.convert("L")
    gray = np.asarray(gray_image)
    # One 256-bin histogram gives mean, std, percentiles and clipping without sorting any pixels.
    counts = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    levels, total = np.arange(256, dtype=np.float64), counts.sum()
    mean = (counts @ levels) / total
    cumulative = np.cumsum(counts)
    low, high = np.searchsorted(cumulative, [0.01 * total, 0.99 * total])
    return {
        "brightness_mean": float(mean / 255),
        "brightness_std": float(np.sqrt(counts @ (levels - mean) ** 2 / total) / 255),
        "contrast": float((high - low) / 255),  # p99 - p1: ignores a few extreme pixels
        "blur_var": float(ndimage.laplace(gray.astype(np.float32)).var()),  # low = blurry
        "saturated_frac": float((counts[0] + counts[255]) / total),
        "phash": str(imagehash.phash(gray_image)),
    }


def profile_chunk(records: list[tuple[dict[str, Any], bytes]], settings: ProfileSettings) -> list[dict[str, Any]]:
    """Profile a chunk of (manifest row, bytes) pairs; worker entry point.

    Args:
        records: manifest rows (with id, source_path, label, split) and their encoded bytes.
        settings: profile limits.
    Returns:
        Full profile rows, manifest fields first.
    """
    rows = []
    for meta, data in records:
        row = {key: str(meta[key]) for key in _MANIFEST_KEYS}
        row.update(profile_image(data, settings))
        expected = meta.get("sha256")
        if expected and row["decode_ok"] and expected != row["sha256"]:
            row.update(decode_ok=False, error=f"stored bytes do not match the manifest sha256 ({expected[:12]}...)")
        rows.append(row)
    return rows


def profile_records(records: Iterable[tuple[dict[str, Any], bytes]], total: int | None,
                    settings: ProfileSettings = ProfileSettings(), workers: int = 1) -> pa.Table:
    """Profile a stream of (manifest row, bytes) pairs in parallel processes.

    Args:
        records: manifest rows and encoded bytes, e.g. ``pipeline.data.shards.iter_records(dir)``.
        total: number of records, for the progress bar (None when unknown).
        settings: profile limits and chunk size.
        workers: worker processes; 1 profiles in this process.
    Returns:
        The profile table (:data:`PROFILE_SCHEMA`), rows in input order.
    Raises:
        ValueError: a manifest row lacks one of id, source_path, label, split.
    """
    chunks = _chunks(_checked(records), settings.chunk_size)
    tables: list[pa.Table] = []
    with _executor(workers) as pool:
        mapped = _ordered_map(pool, profile_chunk, chunks, settings, window=4 * workers)
        for rows in progress(mapped, desc="profile images", total=_chunk_count(total, settings.chunk_size),
                             unit="chunk"):
            tables.append(pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA))
    table = pa.concat_tables(tables) if tables else PROFILE_SCHEMA.empty_table()
    log.info("profiled %d images with %d process(es): %d do not decode", table.num_rows, workers,
             table.num_rows - sum(table.column("decode_ok").to_pylist()))
    return table


def resolve_workers(requested: int) -> int:
    """Number of worker processes: ``requested``, or one per thread of the run's share of the cores when it is 0
    (pipeline/common/threads.py: on a machine shared with another job, half of its cores)."""
    return requested if requested > 0 else current_threads()


def _checked(records: Iterable[tuple[dict[str, Any], bytes]]) -> Iterator[tuple[dict[str, Any], bytes]]:
    for meta, data in records:
        missing = [key for key in _MANIFEST_KEYS if key not in meta]
        if missing:
            raise ValueError(f"manifest row {meta.get('id', meta)!r} lacks column(s) {', '.join(missing)}")
        yield meta, data


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _chunk_count(total: int | None, size: int) -> int | None:
    return None if total is None else -(-total // size)


@contextlib.contextmanager
def _executor(workers: int) -> Iterator[Executor | None]:
    """A process pool (pipeline/common/pools.py: safe with threads in the parent), or None for in-process work."""
    if workers <= 1:
        yield None
        return
    with process_pool(workers, [__name__]) as pool:
        yield pool


def _ordered_map(pool: Executor | None, fn: Callable[..., Any], items: Iterable[Any], *args: Any,
                 window: int) -> Iterator[Any]:
    """``map`` that keeps at most ``window`` tasks in flight, so input is read only as fast as it is used."""
    if pool is None:
        yield from (fn(item, *args) for item in items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item, *args))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
