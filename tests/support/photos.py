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

__all__ = ["PHOTOS", "photo_crops", "write_photo_dataset", "write_photo_folder"]
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


def photo_crops(name: str, count: int, rng: np.random.Generator, size: int | None = None) -> list[bytes]:
    """``count`` grayscale PNG crops of one of scikit-image's photographs."""
    from skimage import color, data

    image = getattr(data, name)()
    gray = (color.rgb2gray(image) * 255).astype(np.uint8) if image.ndim == 3 else image
    return [_crop(gray, rng, size) for _ in range(count)]


def write_photo_dataset(root: Path, per_split: dict[str, int], seed: int = 0, size: int | None = None) -> Path:
    """A dataset directory of ``per_split[split]`` crops per photo and split (ids ``<photo>-<split>-<j>``)."""
    rng = np.random.default_rng(seed)
    items = []
    for name in PHOTOS:
        for split, count in per_split.items():
            items += [Item(f"{name}-{split}-{j:02d}", name, split, data)
                      for j, data in enumerate(photo_crops(name, count, rng, size))]
    return write_dataset(root, items, list(PHOTOS))


def write_photo_folder(root: Path, photos: list[str], per_class: int, seed: int = 0, size: int = 32) -> Path:
    """An image folder to ingest: ``root/<photo>/<j>.png``, grayscale crops, the class being the photo."""
    rng = np.random.default_rng(seed)
    for name in photos:
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, data in enumerate(photo_crops(name, per_class, rng, size)):
            (root / name / f"{j:03d}.png").write_bytes(data)
    return root
