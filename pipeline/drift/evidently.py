"""The Evidently 0.7 Report of a drift check (saved as HTML and JSON, and added to the Workspace).

It holds DataDriftPreset on the image descriptors, prediction drift (predicted class and confidence),
Evidently's own embedding drift (shown for context only: it is badly calibrated, see docs/drift.md;
left out when a side is too small for its t-SNE view),
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

__all__ = ["EMBEDDING_PREFIX", "report_frame", "histogram_safe", "build_snapshot", "save_snapshot"]

EMBEDDING_PREFIX = "emb_"
_MIN_RELATIVE_RANGE = 1e-6  # a column spanning less than this share of its magnitude cannot be binned
# Evidently's embedding view runs a t-SNE (perplexity 30: needs more rows than that) over both sides
# and a 2-d kernel density per side; below these sizes it raises instead of drawing.
_EMBEDDING_VIEW_MIN_ROWS = 30
_EMBEDDING_VIEW_MIN_SIDE = 10


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
    parts = [descriptors.reset_index(drop=True),
             pd.DataFrame({"prediction": [classes[i] for i in probs.argmax(axis=1)], "confidence": probs.max(axis=1)}),
             pd.DataFrame(embeddings, columns=[f"{EMBEDDING_PREFIX}{j}" for j in range(embeddings.shape[1])])]
    if labels is not None:
        parts.append(pd.DataFrame({"label": labels.astype(str).to_numpy()}))
    return pd.concat(parts, axis=1)  # one concat: a column at a time fragments the frame


def histogram_safe(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[list[str], list[str]]:
    """Split numeric columns into those Evidently can plot and those it cannot.

    Evidently draws a 10-bin histogram of every numeric column; numpy refuses bins narrower than the
    float resolution ("Too many bins for data range"), which a column constant or nearly constant on
    both sides (1e-16 apart at 0.5) produces, and a constant column breaks its correlations. Such a
    column carries no drift worth a chart; the calibrated tests still see it.

    Args:
        reference, current: the two frames.
        columns: numeric columns to check.
    Returns:
        (kept, left out) column names.
    """
    kept, dropped = [], []
    for column in columns:
        pooled = pd.concat([reference[column], current[column]]).to_numpy(dtype=float)
        pooled = pooled[np.isfinite(pooled)]
        low, high = (float(pooled.min()), float(pooled.max())) if pooled.size else (0.0, 0.0)
        wide = high - low > _MIN_RELATIVE_RANGE * max(abs(low), abs(high))
        (kept if wide and high > low else dropped).append(column)
    return kept, dropped


def _classification(reference: pd.DataFrame, current: pd.DataFrame, classes: list[str]) -> Any | None:
    """The classification Evidently should assume, or None when it cannot score this pair of frames.

    Evidently's quality metrics take any frame with exactly two distinct labels as binary and look up
    its positive label (1 unless told), so string labels fail with ``KeyError: 1``. Two-class models
    name their positive class; a multi-class model whose frames show two classes needs one positive
    label present in each such frame.
    """
    from evidently import BinaryClassification, MulticlassClassification

    columns = {"target": "label", "prediction_labels": "prediction"}
    if len(classes) == 2:
        return BinaryClassification(**columns, pos_label=classes[1])
    seen = [set(f["label"]) | set(f["prediction"]) for f in (reference, current)]
    pairs = [s for s in seen if len(s) == 2]
    if not pairs:
        return MulticlassClassification(**columns)
    shared = sorted(set.intersection(*pairs))
    return BinaryClassification(**columns, pos_label=shared[0]) if shared else None


def build_snapshot(reference: pd.DataFrame, current: pd.DataFrame, descriptor_columns: list[str],
                   metadata: dict[str, str], tags: list[str], name: str, classes: list[str]) -> Any:
    """Run the Evidently Report on reference vs current frames (from :func:`report_frame`).

    Args:
        reference: reference frame.
        current: current frame (with ``label`` when accuracy should be reported).
        descriptor_columns: the descriptor columns DataDriftPreset covers (those it cannot plot are
            left out, see :func:`histogram_safe`, and named in the metadata).
        metadata: string metadata stored with the snapshot (the calibrated result).
        tags: tags stored with the snapshot (e.g. "drift", "sharpness down").
        name: snapshot name shown in the Workspace.
        classes: the model's class names (a two-class model gets a binary definition).
    Returns:
        The evidently Snapshot.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import Accuracy, EmbeddingsDrift, ValueDrift
    from evidently.presets import DataDriftPreset

    embeddings = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX)]
    numeric, left_out = histogram_safe(reference, current, [*descriptor_columns, "confidence", *embeddings])
    descriptor_columns = [c for c in descriptor_columns if c in numeric]
    embeddings = [c for c in embeddings if c in numeric]
    labelled = "label" in reference.columns and "label" in current.columns
    classification = _classification(reference, current, classes) if labelled else None
    definition = DataDefinition(
        numerical_columns=numeric, categorical_columns=["prediction", "label"] if labelled else ["prediction"],
        embeddings={"embeddings": embeddings} if embeddings else None,
        classification=[classification] if classification is not None else None)
    metrics: list[Any] = [ValueDrift(column="prediction")]
    if descriptor_columns:
        metrics.insert(0, DataDriftPreset(columns=descriptor_columns))
    if "confidence" in numeric:
        metrics.append(ValueDrift(column="confidence"))
    if embeddings and len(reference) >= _EMBEDDING_VIEW_MIN_SIDE and len(current) >= _EMBEDDING_VIEW_MIN_SIDE \
            and len(reference) + len(current) > _EMBEDDING_VIEW_MIN_ROWS:
        metrics.append(EmbeddingsDrift(embeddings_name="embeddings"))
    if classification is not None:
        metrics.append(Accuracy())
    if left_out:
        metadata = {**metadata, "left_out_of_evidently": ", ".join(left_out)}
    report = Report(metrics, metadata=metadata, tags=tags)
    columns = [*numeric, "prediction", *(["label"] if labelled else [])]
    # A column constant on one side only is drift worth showing, but Evidently's correlation table
    # divides by its zero spread; numpy's warning about that NaN cell is noise here.
    with np.errstate(invalid="ignore", divide="ignore"):
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
