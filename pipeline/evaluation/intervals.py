"""Intervals that are valid accuracies, and paired tests of two models on the same images.

- :func:`wilson`: the Wilson score interval of an accuracy measured on ``n`` images (in [0, 1] by
  construction, never zero-width).
- :func:`seed_interval`: the interval of a mean accuracy over seeds (each seed its own subset draw,
  initialisation and data order): a Student-t interval over the seeds; a side that would leave [0, 1]
  is taken from the same interval computed on the logit scale instead (which cannot leave it); then
  widened to at least the Wilson interval of the mean on the ``n`` test images, so that seeds that
  agree exactly still leave the test-set sampling noise. Seeds that give identical results are
  flagged (``identical_seeds``), never read as certainty.
- :func:`paired_comparison`: two models on the same images: the exact McNemar test on the images
  where exactly one of them is right, and a paired percentile bootstrap of the accuracy difference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["INTERVAL_METHOD", "PAIRED_TEST", "wilson", "seed_interval", "paired_comparison"]

INTERVAL_METHOD = ("Student-t interval over seeds (a side that would leave [0, 1] from the logit scale), at least "
                   "as wide as the Wilson interval of the mean accuracy on the n test images")
PAIRED_TEST = "exact McNemar test on the discordant images, paired bootstrap interval of the accuracy difference"


def _stats():
    """scipy.stats, imported when a function here first computes: 0.8 s of CPU that the processes which only show
    results (each flow run's process renders a blessing, pipeline/runs/summary.py) never spend."""
    from scipy import stats

    return stats


def _round(value: float) -> float:
    return round(float(value), 4)


def wilson(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``n`` images."""
    if n <= 0:
        return 0.0, 1.0
    z = _stats().norm.ppf(0.5 + confidence / 2)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    half = _stats().t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def seed_interval(accuracies: Sequence[float], n_test: int, confidence: float = 0.95) -> dict:
    """Mean accuracy over seeds with an interval inside [0, 1] (see the module docstring).

    Args:
        accuracies: one test accuracy per seed.
        n_test: test images each accuracy was measured on.
        confidence: coverage.
    Returns:
        ``{"mean", "low", "high", "std", "n_seeds", "identical_seeds"}``.
    """
    acc = np.asarray(accuracies, dtype=float)
    if acc.size == 0:
        raise ValueError("interval of no accuracies")
    if ((acc < 0) | (acc > 1)).any():
        raise ValueError(f"accuracies must lie in [0, 1], got {acc.tolist()}")
    mean = float(acc.mean())
    low, high = wilson(mean, n_test, confidence)
    if acc.size > 1 and np.ptp(acc) > 0:
        t_low, t_high = _t_interval(acc, confidence)
        if t_low < 0 or t_high > 1:
            eps = 0.5 / max(n_test, 1)  # a seed at 0 or 1 stays finite on the logit scale
            clipped = np.clip(acc, eps, 1 - eps)
            logit_low, logit_high = _t_interval(np.log(clipped / (1 - clipped)), confidence)
            t_low = t_low if t_low >= 0 else 1 / (1 + np.exp(-logit_low))
            t_high = t_high if t_high <= 1 else 1 / (1 + np.exp(-logit_high))
        low, high = min(low, float(t_low)), max(high, float(t_high))
    return {"mean": _round(mean), "low": _round(min(low, mean)), "high": _round(max(high, mean)),
            "std": _round(acc.std(ddof=1)) if acc.size > 1 else 0.0, "n_seeds": int(acc.size),
            "identical_seeds": bool(acc.size > 1 and np.ptp(acc) == 0)}


def paired_comparison(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> dict:
    """Model A against model B on the same images.

    Args:
        correct_a: per image, whether A is right.
        correct_b: per image, whether B is right (same images, same order).
        confidence: coverage of the difference's interval.
        resamples: bootstrap resamples.
        seed: bootstrap seed.
    Returns:
        ``{"n", "accuracy_a", "accuracy_b", "a_only", "b_only", "p_value", "difference": {mean, low, high}}``
        (difference = accuracy A - accuracy B; p_value of the exact two-sided McNemar test).
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired comparison needs two equal, non-empty per-image vectors, got {a.shape}, {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p_value = _stats().binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    diff = a.astype(float) - b.astype(float)
    if np.ptp(diff) == 0:
        low = high = float(diff[0])
    else:
        boot = _stats().bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=confidence,
                               method="percentile", random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return {"n": int(a.size), "accuracy_a": _round(a.mean()), "accuracy_b": _round(b.mean()), "a_only": a_only,
            "b_only": b_only, "p_value": float(round(p_value, 6)),
            "difference": {"mean": _round(diff.mean()), "low": _round(low), "high": _round(high)}}
