"""Which per-image descriptors moved, in words that say what was measured ("sharpness (Laplacian
variance) up: noise or sharpening"), with effect sizes.

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

__all__ = ["Descriptor", "DESCRIPTORS", "DescriptorShift", "describe_shifts", "moved_words"]


@dataclass(frozen=True)
class Descriptor:
    """What a profile column measures, and what its moving up or down usually means."""

    label: str  # what was measured, named so a reviewer can trust it
    explains: str  # one line for the report
    up: str  # the usual causes when it rises
    down: str  # ... and when it falls


# The validation profile's columns (pipeline/validation/profile.py), each described by what it
# measures: a fall in the Laplacian's variance is blur or smoothing, but noise raises it, so it is
# named "sharpness" and never reads "blur down" on a noisy batch.
DESCRIPTORS: dict[str, Descriptor] = {
    "brightness_mean": Descriptor("brightness (mean grey level)", "mean grey level of the image, 0 black to 1 white",
                                  "lighter images or overexposure", "darker images or underexposure"),
    "brightness_std": Descriptor("grey-level spread (std)", "standard deviation of the grey levels in the image",
                                 "more contrast or noise", "faded or flatter images"),
    "contrast": Descriptor("contrast (1st-99th percentile range)",
                           "range between the 1st and 99th percentile grey levels", "more contrast",
                           "washed-out or low-contrast images"),
    "blur_var": Descriptor("sharpness (Laplacian variance)", "variance of the Laplacian: fine detail and edges",
                           "noise or sharpening", "blur, smoothing or lower resolution"),
    "saturated_frac": Descriptor("clipped pixels (share at 0 or 255)", "share of pixels that are pure black or white",
                                 "clipping: over/underexposure or high contrast", "fewer pure black/white pixels: "
                                 "faded or noisy images"),
    "width": Descriptor("width (pixels)", "stored image width", "larger images", "smaller images"),
    "height": Descriptor("height (pixels)", "stored image height", "larger images", "smaller images"),
    "aspect_ratio": Descriptor("aspect ratio (width / height)", "stored width over height", "wider images",
                               "taller images"),
    "file_bytes": Descriptor("file size (bytes)", "size of the stored file", "more detail or noise, or a lighter "
                             "compression", "less detail, or a stronger compression"),
}


@dataclass(frozen=True)
class DescriptorShift:
    """How one descriptor changed from reference to current."""

    descriptor: str  # column name
    label: str  # what it measures ("sharpness (Laplacian variance)" for blur_var)
    direction: str  # "up" | "down" | "same", of the measured value
    meaning: str  # the usual causes of that direction ("" when unknown or same)
    explains: str  # one line on what the descriptor measures
    effect_size: float  # median shift of the column / reference robust spread (signed)
    ks_distance: float
    p_value: float  # Bonferroni-corrected over the descriptors tested
    reference_median: float
    current_median: float
    moved: bool

    @property
    def words(self) -> str:
        """E.g. ``"sharpness (Laplacian variance) down: blur, smoothing or lower resolution"``."""
        return f"{self.label} {self.direction}" + (f": {self.meaning}" if self.meaning else "")

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
        columns: descriptors to test; default: the columns of DESCRIPTORS present in both tables,
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
    known = [c for c in DESCRIPTORS if c in reference.columns and c in current.columns]
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
    known = DESCRIPTORS.get(name, Descriptor(name, f"profile column {name}", "", ""))
    direction = "up" if effect > 0 else "down" if effect < 0 else "same"
    meaning = {"up": known.up, "down": known.down}.get(direction, "")
    moved = p_value < alpha and abs(effect) >= min_effect
    return DescriptorShift(name, known.label, direction, meaning, known.explains, float(effect), float(ks.statistic),
                           p_value, ref_median, cur_median, moved)


def moved_words(shifts: list[DescriptorShift]) -> list[str]:
    """The words of the descriptors that moved, largest effect first (e.g.
    ``["sharpness (Laplacian variance) up: noise or sharpening"]``)."""
    return [s.words for s in shifts if s.moved]
