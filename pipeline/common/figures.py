"""Saving figures: the one place that picks the headless backend and writes PNGs atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI, in DVC runs or on a worker
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from pipeline.common.io import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG atomically (a crash leaves the previous file) and close it.

    Args:
        fig: the matplotlib figure.
        path: the PNG to write.
        dpi: resolution.
        tight: crop the canvas to what is drawn.
    Returns:
        The path.
    """
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return Path(path)
