"""Figures people look at after ingest and shift: class counts per split, and image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from pipeline.common.figures import plt, save_figure

__all__ = ["plot_class_counts", "plot_image_grid"]


def plot_class_counts(summary: dict, target: Path, title: str) -> Path:
    """Stacked bars of images per class and split (from :func:`pipeline.data.splits.split_summary`).

    Args:
        summary: the splits summary (class_counts: class -> split -> count).
        target: PNG file to write.
        title: figure title.
    Returns:
        The PNG path.
    """
    classes = list(summary["class_counts"])
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) + 2), 4))
    bottom = [0] * len(classes)
    for split in ("train", "val", "test"):
        values = [summary["class_counts"][c][split] for c in classes]
        ax.bar(range(len(classes)), values, bottom=bottom, label=f"{split} ({summary['sizes'][split]})")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(classes)), [c[:14] for c in classes], rotation=90 if len(classes) > 12 else 0)
    ax.set(ylabel="images", title=title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, target, dpi=90, tight=False)


def plot_image_grid(rows: Sequence[Sequence[Image.Image]], row_titles: Sequence[str],
                    col_titles: Sequence[str], target: Path, title: str) -> Path:
    """A grid of images (e.g. classes x samples, or corruptions x severities).

    Args:
        rows: images, one list per grid row (rows may be shorter than the widest).
        row_titles: label of each row.
        col_titles: label of each column (may be empty strings).
        target: PNG file to write.
        title: figure title.
    Returns:
        The PNG path.
    """
    ncols = max(1, *(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.3 * ncols + 1, 1.3 * len(rows) + 0.6), squeeze=False)
    for i, images in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j].convert("RGB"))
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(col_titles[j] if j < len(col_titles) else "", fontsize=8)
        axes[i][0].set_ylabel(row_titles[i][:14], fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, target, dpi=90, tight=False)
