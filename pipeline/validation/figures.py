"""The profile at a glance: one PNG of class counts and the distributions of the image descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common.figures import plt, save_figure
from pipeline.validation.checks import SPLITS

__all__ = ["plot_profile"]
_DESCRIPTORS = (("brightness_mean", "brightness (mean, 0-1)"), ("contrast", "contrast (p99-p1, 0-1)"),
                ("blur_var", "sharpness: log10 var(Laplacian)"), ("saturated_frac", "clipped pixels (fraction)"))


def plot_profile(profile: pd.DataFrame, classes: pd.DataFrame, target: Path) -> Path:
    """Draw class counts per split, image sizes and descriptor histograms per split.

    Args:
        profile: the profile table.
        classes: the class table (label, n_train, n_val, n_test).
        target: the PNG to write.
    Returns:
        ``target``.
    """
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    _class_bars(axes[0, 0], classes)
    _sizes(axes[0, 1], profile)
    decoded = profile[profile["decode_ok"]]
    for ax, (column, title) in zip([axes[0, 2], *axes[1]], _DESCRIPTORS):
        values = decoded[column].astype(float)
        values = np.log10(values + 1.0) if column == "blur_var" else values
        bins = np.histogram_bin_edges(values.dropna(), bins=40) if values.notna().any() else 40
        for split in SPLITS:  # shared bins: the splits' shapes are directly comparable
            chosen = values[decoded["split"] == split].dropna()
            if len(chosen):
                ax.hist(chosen, bins=bins, alpha=0.5, label=split, density=True)
        ax.set_title(title)
        ax.legend(fontsize=8)
    bad = int((~profile["decode_ok"]).sum())
    fig.suptitle(f"image profile: {len(profile)} images, {bad} not decodable")
    fig.tight_layout()
    return save_figure(fig, target, dpi=90, tight=False)


def _class_bars(ax, classes: pd.DataFrame) -> None:
    bottom = np.zeros(len(classes))
    for split in SPLITS:
        counts = classes[f"n_{split}"].to_numpy()
        ax.bar(classes["label"].astype(str), counts, bottom=bottom, label=split)
        bottom += counts
    ax.set_title("images per class and split")
    ax.tick_params(axis="x", labelrotation=90 if len(classes) > 15 else 0)
    ax.legend(fontsize=8)


def _sizes(ax, profile: pd.DataFrame) -> None:
    sized = profile.dropna(subset=["width", "height"])
    counts = sized.groupby(["width", "height"]).size().reset_index(name="n")
    ax.scatter(counts["width"], counts["height"], s=20 + 200 * counts["n"] / max(counts["n"].max(), 1), alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title(f"image sizes ({len(counts)} distinct)")
