"""Accuracy per corruption and severity of a domain-shift set (its ``corruption`` / ``severity`` columns)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import rnd

__all__ = ["robustness"]


def robustness(rows: pd.DataFrame, probs: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy per corruption and severity of a domain-shift set.

    Args:
        rows: the set's manifest rows in prediction order (columns corruption, severity).
        probs: predicted probabilities, one row per manifest row.
        labels: true label indices.
    Returns:
        ``{corruption: {str(severity): accuracy}}``; clean images appear as corruption ``none``, severity 0.
    """
    missing = [c for c in ("corruption", "severity") if c not in rows.columns]
    if missing:
        raise ValueError(f"domain-shift manifest lacks columns {missing} (was it written by `tlops shift`?)")
    if len(rows) != len(probs):
        raise ValueError(f"{len(rows)} manifest rows but {len(probs)} predictions")
    frame = pd.DataFrame({"corruption": rows["corruption"].to_numpy(), "severity": rows["severity"].to_numpy(),
                          "correct": probs.argmax(axis=1) == labels})
    table: dict[str, dict[str, float]] = {}
    for (corruption, severity), group in frame.groupby(["corruption", "severity"], sort=True):
        table.setdefault(str(corruption), {})[str(int(severity))] = rnd(group["correct"].mean())
    return table
