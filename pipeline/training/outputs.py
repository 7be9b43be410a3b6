"""What a training stage writes (the fine-tune and the scratch baseline alike): the model directory, metrics.json,
the per-epoch history.csv, the PNG of the curves, and the DVCLive folder that mirrors the history each epoch.

One definition, so that both models are saved and described the same way and the evaluation reads both alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.common.io import write_json
from pipeline.models import LoadedModel
from pipeline.training.curves import plot_history, write_history
from pipeline.training.tracking import LiveHistory

__all__ = ["TrainingOutputs"]


@dataclass(frozen=True)
class TrainingOutputs:
    """The paths a training stage writes."""

    model_dir: Path  # model.pt + card.json
    metrics: Path  # metrics.json
    history: Path  # per-epoch history CSV (dvc plots)
    plot: Path  # PNG of the training curves
    live: Path | None = None  # DVCLive folder (None: not written)

    def on_epoch(self) -> LiveHistory | None:
        """The training loop's per-epoch hook: the history mirrored into the DVCLive folder (None without one)."""
        return LiveHistory(self.live) if self.live is not None else None

    def write(self, model: LoadedModel, card: dict[str, Any], metrics: dict[str, Any],
              history: Sequence[dict[str, Any]], title: str) -> None:
        """Save the model with its card (``card`` plus ``metrics``), write metrics.json, the history and its curves.

        Args:
            model: the trained model.
            card: what the card records besides the model's identity and the metrics (plan, data, params).
            metrics: the run's metrics (metrics.json, and the card's ``metrics``).
            history: the per-epoch rows (pipeline/training/curves.py ``HISTORY_COLUMNS``).
            title: the curves' title.
        """
        model.save(self.model_dir, {**card, "metrics": metrics})
        write_json(self.metrics, metrics)
        write_history(self.history, history)
        plot_history(self.plot, history, title)
