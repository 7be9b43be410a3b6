"""The drift report: an Evidently 0.7 Report (saved as HTML and JSON) and the page people review.

The Evidently Report holds DataDriftPreset on the image descriptors, prediction drift (predicted
class and confidence), Evidently's own embedding drift (shown for context only: it is badly
calibrated, see docs/drift.md), accuracy on the current set when it has labels, and the calibrated
test's result in the snapshot's metadata and tags (so the Workspace lists it run by run).
The review page (report.html) leads with the calibrated decision, says in words which descriptors
moved, shows the current images most unlike the reference, and embeds the Evidently report.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.io import atomic_path, write_text

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently sends usage telemetry unless told not to

__all__ = ["EMBEDDING_PREFIX", "report_frame", "build_snapshot", "save_snapshot", "write_review_page"]

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


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.drift{background:#fdd}"
          ".ok{background:#dfd}.banner{padding:1em;font-size:1.3em}iframe{width:100%;height:1400px;border:1px solid #ccc}")


def write_review_page(target: Path, summary: dict[str, Any], thumbnails: Path | None, evidently_html: Path) -> Path:
    """Write report.html: the calibrated decision first, then words, tables, thumbnails, Evidently.

    Args:
        target: the page to write (atomically).
        summary: the stage's drift.json content.
        thumbnails: PNG sheet of the most unlike current images (embedded), or None.
        evidently_html: the Evidently HTML, embedded by a relative link (same folder).
    Returns:
        The path written.
    """
    detected = summary["drift_detected"]
    words = ", ".join(summary["descriptors_moved"]) or "none"
    tests = [{"test": name, "p_value": t["p_value"], "effect": t["effect_size"], "effect_name": t["effect_name"],
              "n_reference": t["n_reference"], "n_current": t["n_current"]} for name, t in summary["tests"].items()]
    accuracy, reference_accuracy = summary.get("accuracy_current"), summary.get("accuracy_reference")
    parts = [
        f"<h1>Drift report: {html.escape(summary['current'])}</h1>",
        f'<div class="banner {"drift" if detected else "ok"}">{"DRIFT DETECTED" if detected else "No drift detected"}'
        f" (combined p = {summary['p_value']:.3g}, alpha = {summary['alpha']:g})</div>",
        f"<p>{html.escape(summary['rule'])}. This decision comes from the calibrated tests below; "
        "Evidently's own drift flags in the embedded report are shown for context only.</p>",
        _table(tests, ["test", "p_value", "effect", "effect_name", "n_reference", "n_current"]),
        f"<h2>Descriptors that moved: {html.escape(words)}</h2>",
        _table(summary["descriptors"], ["words", "moved", "effect_size", "p_value", "reference_median",
                                        "current_median", "descriptor"]),
        f"<p>Accuracy on the current set: {'n/a (no labels)' if accuracy is None else f'{accuracy:.4f}'}"
        f" (reference: {'n/a' if reference_accuracy is None else f'{reference_accuracy:.4f}'}); "
        f"domain-classifier AUC {summary['domain_classifier_auc']:.3f} (0.5 = indistinguishable).</p>",
    ]
    if summary.get("groups"):
        parts += ["<h2>Per corruption and severity (each at its own batch size)</h2>",
                  _table(summary["groups"], ["corruption", "severity", "n", "drift_detected", "p_value",
                                             "accuracy"])]
    parts += ["<h2>Current images most unlike the reference</h2>", _img(thumbnails, "most unlike the reference"),
              f'<h2>Evidently report</h2><p><a href="{html.escape(evidently_html.name)}">open it alone</a></p>',
              f'<iframe src="{html.escape(evidently_html.name)}"></iframe>']
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>tlops drift</title><style>{_STYLE}</style>" \
           f"</head><body>{''.join(parts)}</body></html>"
    return write_text(target, page)
