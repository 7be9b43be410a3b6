"""A small natural-image task: grayscale crops of scikit-image's photographs, the class being the photograph.

Crops are taken at random places and scales (a quarter to a half of the photo's side) and rotated by
a random multiple of 90 degrees. ImageNet features tell these textures and objects apart from a few
examples; an untrained network's do not.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.badimages import Item, write_dataset

__all__ = ["PHOTOS", "write_photo_dataset"]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "brick", "grass", "gravel")


def _crop(gray: np.ndarray, rng: np.random.Generator, size: int | None) -> bytes:
    h, w = gray.shape
    side = int(min(h, w) * rng.uniform(0.25, 0.5))
    top, left = rng.integers(0, h - side), rng.integers(0, w - side)
    image = Image.fromarray(gray[top:top + side, left:left + side]).rotate(90 * int(rng.integers(4)))
    if size:
        image = image.resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_photo_dataset(root: Path, per_split: dict[str, int], seed: int = 0, size: int | None = None) -> Path:
    """A dataset directory of ``per_split[split]`` crops per photo and split (ids ``<photo>-<split>-<j>``)."""
    from skimage import color, data

    rng = np.random.default_rng(seed)
    items = []
    for name in PHOTOS:
        image = getattr(data, name)()
        gray = (color.rgb2gray(image) * 255).astype(np.uint8) if image.ndim == 3 else image
        for split, count in per_split.items():
            items += [Item(f"{name}-{split}-{j:02d}", name, split, _crop(gray, rng, size)) for j in range(count)]
    return write_dataset(root, items, list(PHOTOS))
