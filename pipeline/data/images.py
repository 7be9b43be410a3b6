"""Turning stored image bytes into what a model takes: upright 8-bit RGB, conversions named.

The validation profile records each conversion; every reader that feeds a model (training data
sets, evaluation, drift, promotion) decodes through :func:`decode_rgb`, so a rotated photo or a 16-bit
scan reaches the network the same way everywhere.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

__all__ = ["SIXTEEN_BIT_MODES", "to_model_input", "decode_rgb"]

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_EXIF_ORIENTATION = 0x0112


def to_model_input(image: Image.Image, orientation: int = 1, bit_depth: int = 8) -> tuple[Image.Image, str | None]:
    """Turn a decoded image into upright 8-bit RGB, saying what was changed.

    Args:
        image: a loaded PIL image of any mode.
        orientation: its EXIF orientation tag (1 = upright).
        bit_depth: bits per channel as stored in the file.
    Returns:
        The RGB image and a description of the conversion (``None`` when it already was upright RGB).
    """
    steps = []
    if bit_depth > 8 and image.mode in ("RGB", "RGBA"):  # PIL's PNG decoder already reduced it
        steps.append(f"{bit_depth}-bit -> 8-bit (by the decoder)")
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        steps.append(f"exif-orientation {orientation} -> upright")
    if image.mode in SIXTEEN_BIT_MODES:  # PIL's own I;16 -> L conversion clips at 255 instead of scaling
        steps.append(f"{image.mode} 16-bit -> L 8-bit")
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8), mode="L")
    if image.mode != "RGB":
        note = " (alpha dropped)" if "A" in image.getbands() or "transparency" in image.info else ""
        steps.append(f"{image.mode} -> RGB{note}")
        image = image.convert("RGB")
    return image, "; ".join(steps) or None


def decode_rgb(data: bytes) -> Image.Image:
    """Decode encoded image bytes into upright 8-bit RGB (EXIF orientation applied, 16-bit scaled)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    rgb, _ = to_model_input(image, image.getexif().get(_EXIF_ORIENTATION, 1))
    return rgb
