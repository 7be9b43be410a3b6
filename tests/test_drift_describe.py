"""Descriptor shifts in words that say what was measured: direction, effect thresholds, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.drift.describe import describe_shifts, moved_words


def _profile(n: int, seed: int, brightness: float = 0.8, blur_var: float = 900.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"brightness_mean": rng.normal(brightness, 0.05, n), "contrast": rng.normal(0.9, 0.05, n),
                         "blur_var": rng.normal(blur_var, 80, n), "width": np.full(n, 64),
                         "id": [f"i{i}" for i in range(n)]})


def test_blurred_darker_images_read_sharpness_down_and_brightness_down():
    shifts = describe_shifts(_profile(300, 0), _profile(100, 1, brightness=0.6, blur_var=300.0))
    assert set(moved_words(shifts)) == {
        "sharpness (Laplacian variance) down: blur, smoothing or lower resolution",
        "brightness (mean grey level) down: darker images or underexposure"}
    sharpness = next(s for s in shifts if s.descriptor == "blur_var")
    assert sharpness.effect_size < -3 and sharpness.direction == "down"
    assert "Laplacian" in sharpness.to_dict()["explains"]


def test_noise_reads_sharpness_up_never_blur_down():
    # noise raises the Laplacian variance: the words name the measurement and its usual causes
    shifts = describe_shifts(_profile(300, 0), _profile(100, 1, blur_var=2500.0))
    assert moved_words(shifts) == ["sharpness (Laplacian variance) up: noise or sharpening"]
    assert not any("blur down" in w for w in moved_words(shifts))


def test_no_shift_moves_nothing_and_constant_columns_are_safe():
    shifts = describe_shifts(_profile(300, 0), _profile(100, 2))
    assert moved_words(shifts) == []
    assert next(s for s in shifts if s.descriptor == "width").direction == "same"


def test_tiny_effect_on_a_big_batch_is_not_reported_as_moved():
    reference = _profile(5000, 0)
    current = _profile(5000, 3, brightness=0.805)  # significant at n=5000, but a 0.1-sd change
    brightness = next(s for s in describe_shifts(reference, current) if s.descriptor == "brightness_mean")
    assert not brightness.moved


def test_unknown_columns_are_named():
    with pytest.raises(ValueError, match="edge_density"):
        describe_shifts(_profile(10, 0), _profile(10, 1), columns=["edge_density"])
