"""Corruptions: every kind at every severity changes the image more as the level rises, seeded per image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.shift.corruptions import CORRUPTIONS, SEVERITY_TABLE, corrupt, corruption_seed


def _digit_like(size: int = 32) -> Image.Image:
    """A dark ring on a light page, like a scanned digit."""
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    gray = np.where(np.abs(radius - size / 4) < size / 10, 20, 235).astype(np.uint8)
    return Image.fromarray(gray, mode="L")


def _damage(image: Image.Image, out: Image.Image) -> float:
    return float(np.abs(np.asarray(image.convert("RGB"), float) - np.asarray(out, float)).mean())


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_grows_with_severity(name):
    image = _digit_like()
    outs = [corrupt(image, name, s, corruption_seed(0, "img", name, s)) for s in range(0, 6)]
    assert all(o.size == image.size and o.mode == "RGB" for o in outs)
    damage = [_damage(image, o) for o in outs]
    assert damage[0] == 0 and damage[1] > 0.5, damage
    assert damage[5] > damage[1], damage
    assert len(SEVERITY_TABLE[name]) == 5


def test_seeded_per_image_and_reproducible():
    image = _digit_like()
    seed_a, seed_b = corruption_seed(0, "a", "gaussian_noise", 3), corruption_seed(0, "b", "gaussian_noise", 3)
    first, again = (corrupt(image, "gaussian_noise", 3, seed_a) for _ in range(2))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != corrupt(image, "gaussian_noise", 3, seed_b).tobytes()
    assert seed_a != corruption_seed(1, "a", "gaussian_noise", 3)


def test_bad_names_and_levels():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(_digit_like(), "fog", 1, 0)
    with pytest.raises(ValueError, match="severity 6"):
        corrupt(_digit_like(), "jpeg", 6, 0)
