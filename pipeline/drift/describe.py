"""Which per-image descriptors moved, in words ("blur up", "brightness down"), with effect sizes.

Each numeric descriptor column (from the validation profile) gets a two-sample KS test, a direction
from the change of the median, and an effect size: the median shift in units of the reference's
robust spread (IQR / 1.349, a standard deviation for normal data). A descriptor "moved" when its
Bonferroni-corrected KS p-value is below alpha and the effect is at least ``min_effect``, so a tiny
but significant shift on a large batch is not reported as a change people should act on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["DESCRIPTOR_WORDS", "DescriptorShift", "describe_shifts", "moved_words"]

# Descriptor column of the validation profile -> (word people use, sign). A sign of -1 says the word
# grows when the column falls: blur_var is the variance of the Laplacian, which drops as images blur.
DESCRIPTOR_WORDS: dict[str, tuple[str, int]] = {
    "brightness_mean": ("brightness", 1), "brightness_std": ("brightness spread", 1),
    "contrast": ("contrast", 1), "blur_var": ("blur", -1), "saturated_frac": ("clipped pixels", 1),
    "width": ("width", 1), "height": ("height", 1), "aspect_ratio": ("aspect ratio", 1),
    "file_bytes": ("file size", 1),
}


@dataclass(frozen=True)
class DescriptorShift:
    """How one descriptor changed from reference to current."""

    descriptor: str  # column name
    label: str  # the word people use for it ("blur" for blur_var)
    direction: str  # "up" | "down" | "same", of the word (so blur_var falling is "blur up")
    effect_size: float  # median shift of the column / reference robust spread (signed, of the column)
    ks_distance: float
    p_value: float  # Bonferroni-corrected over the descriptors tested
    reference_median: float
    current_median: float
    moved: bool

    @property
    def words(self) -> str:
        """E.g. ``"blur up"``."""
        return f"{self.label} {self.direction}"

    def to_dict(self) -> dict:
        """Return a JSON-able dict with the words included."""
        return {**asdict(self), "words": self.words}


def _robust_spread(values: np.ndarray) -> float:
    q75, q25 = np.percentile(values, [75, 25])
    spread = (q75 - q25) / 1.349
    # Near-constant descriptors (e.g. size on a fixed-size set) fall back to std, then to 1.
    return float(spread) or float(values.std()) or 1.0


def describe_shifts(reference: pd.DataFrame, current: pd.DataFrame, alpha: float = 0.05,
                    min_effect: float = 0.2, columns: list[str] | None = None) -> list[DescriptorShift]:
    """Test each numeric descriptor and say which moved and which way.

    Args:
        reference: descriptor table of the reference images (one row per image).
        current: descriptor table of the current images.
        alpha: family-wise error rate over the descriptors (Bonferroni).
        min_effect: smallest |median shift / reference spread| reported as moved.
        columns: descriptors to test; default: the columns of DESCRIPTOR_WORDS present in both tables,
            else every numeric column present in both.
    Returns:
        One DescriptorShift per descriptor, largest |effect| first.
    """
    columns = _default_columns(reference, current) if columns is None else columns
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise ValueError(f"descriptor column(s) {missing} missing from the reference or current table")
    shifts = [_shift(c, reference[c].dropna().to_numpy(float), current[c].dropna().to_numpy(float),
                     alpha, min_effect, len(columns)) for c in columns]
    return sorted((s for s in shifts if s is not None), key=lambda s: -abs(s.effect_size))


def _default_columns(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    known = [c for c in DESCRIPTOR_WORDS if c in reference.columns and c in current.columns]
    if known:
        return known

    def numeric(frame: pd.DataFrame, c: str) -> bool:
        return pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])

    return [c for c in reference.columns if c in current.columns and numeric(reference, c) and numeric(current, c)]


def _shift(name: str, ref: np.ndarray, cur: np.ndarray, alpha: float, min_effect: float,
           n_tests: int) -> DescriptorShift | None:
    if len(ref) < 2 or len(cur) < 2:
        return None
    ks = stats.ks_2samp(ref, cur)
    p_value = min(1.0, float(ks.pvalue) * n_tests)
    ref_median, cur_median = float(np.median(ref)), float(np.median(cur))
    effect = (cur_median - ref_median) / _robust_spread(ref)
    if effect == 0:  # medians equal: fall back to the mean shift for the direction
        effect = (float(cur.mean()) - float(ref.mean())) / _robust_spread(ref)
    label, sign = DESCRIPTOR_WORDS.get(name, (name, 1))
    direction = "up" if effect * sign > 0 else "down" if effect * sign < 0 else "same"
    moved = p_value < alpha and abs(effect) >= min_effect
    return DescriptorShift(name, label, direction, float(effect), float(ks.statistic), p_value, ref_median, cur_median, moved)


def moved_words(shifts: list[DescriptorShift]) -> list[str]:
    """The words of the descriptors that moved, largest effect first (e.g. ``["blur up", "contrast down"]``)."""
    return [s.words for s in shifts if s.moved]
