"""The Evidently 0.7 Report of a drift check (saved as HTML and JSON, and added to the Workspace).

It holds DataDriftPreset on the image descriptors, prediction drift (predicted class and confidence),
Evidently's own embedding drift (shown for context only: it is badly calibrated, see docs/drift.md),
accuracy on the current set when it has labels, and the calibrated test's result in the snapshot's
metadata and tags (so the Workspace lists it run by run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.io import atomic_path

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently sends usage telemetry unless told not to

__all__ = ["EMBEDDING_PREFIX", "report_frame", "build_snapshot", "save_snapshot"]

EMBEDDING_PREFIX = "emb_"


def report_frame(descriptors: pd.DataFrame, probs: np.ndarray, embeddings: np.ndarray, classes: list[str],
                 labels: pd.Series | None = None) -> pd.DataFrame:
    """One row per image: descriptors, prediction, confidence, embedding components, label.

    Args:
        descriptors: numeric descriptor columns, one row per image.
        probs: (n, C) softmax outputs, rows in the same order.
        embeddings: (n, k) reduced embeddings, rows in the same order.
        classes: class names in label-index order.
        labels: true class names, or None when the set has no labels.
    Returns:
        The frame Evidently reads.
    """
    if not len(descriptors) == len(probs) == len(embeddings):
        raise ValueError(f"row counts differ: descriptors {len(descriptors)}, softmax {len(probs)}, "
                         f"embeddings {len(embeddings)}")
    frame = descriptors.reset_index(drop=True).copy()
    frame["prediction"] = [classes[i] for i in probs.argmax(axis=1)]
    frame["confidence"] = probs.max(axis=1)
    for j in range(embeddings.shape[1]):
        frame[f"{EMBEDDING_PREFIX}{j}"] = embeddings[:, j]
    if labels is not None:
        frame["label"] = labels.astype(str).to_numpy()
    return frame


def build_snapshot(reference: pd.DataFrame, current: pd.DataFrame, descriptor_columns: list[str],
                   metadata: dict[str, str], tags: list[str], name: str) -> Any:
    """Run the Evidently Report on reference vs current frames (from :func:`report_frame`).

    Args:
        reference: reference frame.
        current: current frame (with ``label`` when accuracy should be reported).
        descriptor_columns: the descriptor columns DataDriftPreset covers.
        metadata: string metadata stored with the snapshot (the calibrated result).
        tags: tags stored with the snapshot (e.g. "drift", "blur up").
        name: snapshot name shown in the Workspace.
    Returns:
        The evidently Snapshot.
    """
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.metrics import Accuracy, EmbeddingsDrift, ValueDrift
    from evidently.presets import DataDriftPreset

    embedding_columns = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX)]
    labelled = "label" in reference.columns and "label" in current.columns
    definition = DataDefinition(
        numerical_columns=[*descriptor_columns, "confidence", *embedding_columns],
        categorical_columns=["prediction", "label"] if labelled else ["prediction"],
        embeddings={"embeddings": embedding_columns} if embedding_columns else None,
        classification=[MulticlassClassification(target="label", prediction_labels="prediction")] if labelled else None)
    metrics: list[Any] = [DataDriftPreset(columns=descriptor_columns), ValueDrift(column="prediction"),
                          ValueDrift(column="confidence")]
    if embedding_columns:
        metrics.append(EmbeddingsDrift(embeddings_name="embeddings"))
    if labelled:
        metrics.append(Accuracy())
    report = Report(metrics, metadata=metadata, tags=tags)
    columns = [*descriptor_columns, "prediction", "confidence", *embedding_columns, *(["label"] if labelled else [])]
    return report.run(Dataset.from_pandas(current[columns], data_definition=definition),
                      Dataset.from_pandas(reference[columns], data_definition=definition), name=name)


def save_snapshot(snapshot: Any, html_path: Path, json_path: Path) -> dict[str, Any]:
    """Write the Evidently report as HTML and JSON (atomically) and return its metric values.

    Args:
        snapshot: the evidently Snapshot.
        html_path: target of the standalone Evidently HTML.
        json_path: target of the Evidently JSON (metric ids, configs, values).
    Returns:
        ``{metric display name: value}`` from the snapshot.
    """
    with atomic_path(html_path, suffix=".html") as tmp:
        snapshot.save_html(str(tmp))
    with atomic_path(json_path, suffix=".json") as tmp:
        snapshot.save_json(str(tmp))
    return {m["metric_name"]: m["value"] for m in snapshot.dict()["metrics"]}
