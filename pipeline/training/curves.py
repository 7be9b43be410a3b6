"""Per-epoch training curves: a CSV that ``dvc plots`` renders and a PNG of loss and accuracy."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from pipeline.common.figures import plt, save_figure
from pipeline.common.io import write_text

__all__ = ["HISTORY_COLUMNS", "write_history", "plot_history"]
HISTORY_COLUMNS = ("epoch", "phase", "phase_index", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "head_lr", "images_per_s", "seconds", "steps")


def write_history(path: str | Path, history: Sequence[dict[str, Any]]) -> Path:
    """Write the per-epoch history as CSV atomically (one row per epoch, HISTORY_COLUMNS)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return write_text(path, buffer.getvalue())


def plot_history(path: str | Path, history: Sequence[dict[str, Any]], title: str) -> Path:
    """Draw loss and accuracy per epoch (train and val), with phase boundaries, to a PNG.

    Args:
        path: the PNG to write.
        history: per-epoch rows (see HISTORY_COLUMNS).
        title: figure title.
    Returns:
        The PNG path.
    """
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "s-", label=f"val {metric}")
        for before, row in zip(history, history[1:]):
            if row["phase_index"] != before["phase_index"]:
                ax.axvline(before["epoch"] + 0.5, color="grey", linestyle=":")
                ax.text(before["epoch"] + 0.6, ax.get_ylim()[1], row["phase"], va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)
