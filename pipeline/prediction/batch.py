"""``tlops predict``: classify a batch of images with a trained model, image by image, refusing what the
validation gate would refuse.

The batch is any source location read without labels, with the ``source`` settings (a folder at any depth, a
.csv/.parquet table, an ``s3://`` prefix; a class folder or a label column is kept as ``label`` when present),
or a dataset folder written by ingest or shift (the drift check's current set). Each image is decoded once, as
the gate decodes it (pipeline/validation/profile.py ``admit_image``), and checked against the gate's per-image
rules in ``params.validate``: it must decode, and its width, height and mode must be within bounds. A rule of severity
``critical`` refuses the image (``status`` refused, ``reason`` says which rule and the value); a ``warning``
one is noted in ``warning``. An unreadable or refused file is one row, never the end of the batch. Images go
through the model's own preprocessing, as in evaluation, so a test image gets the evaluate stage's prediction;
only that small input is kept until its forward pass, never the decoded photo.

Outputs, in ``--out``: ``predictions.parquet`` and ``predictions.csv`` (one row per image: id (the first
16 hex digits of the file's sha256), source, label, status, reason, warning, predicted, confidence, the
top-k classes and probabilities, model_version, model_sha256) and ``summary.json`` (counts, predicted
classes, refusals, images/s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from pipeline.common.device import select_device
from pipeline.common.io import atomic_dir, write_json
from pipeline.common.logs import get_logger, progress
from pipeline.config import Params
from pipeline.data.shards import MANIFEST, iter_records
from pipeline.data.sources import open_source
from pipeline.models import LoadedModel
from pipeline.prediction.models import ModelRef
from pipeline.validation.profile import ProfileSettings, admit_image, image_refusal

__all__ = ["BatchImage", "read_batch", "predict_batch", "PREDICTIONS"]
log = get_logger(__name__)
PREDICTIONS = "predictions"  # .parquet and .csv
_CHUNK = 256  # images decoded and classified at a time: memory stays flat on long batches


@dataclass(frozen=True)
class BatchImage:
    """One image of the batch as read: where it came from, its label if the source has one, its bytes
    (None with ``error`` when it could not be read)."""

    source: str
    label: str
    data: bytes | None
    error: str | None = None


def read_batch(source: str, params: Params) -> Iterator[BatchImage]:
    """Stream the batch's images, unreadable and refused files included (with their error)."""
    if (Path(source).expanduser() / MANIFEST).is_file():  # a dataset folder written by ingest or shift
        for row, data in iter_records(Path(source).expanduser()):
            yield BatchImage(row.get("source_path") or row["id"], str(row.get("label", "")), data)
        return
    reader = open_source(source, params.source, unlabelled=True)
    for record in reader.records():
        yield BatchImage(record.source_path, record.label, record.data)
    for skipped in reader.skipped:  # read failures, refused links and FIFOs: one row each
        yield BatchImage(skipped.path, "", None, skipped.reason)


def predict_batch(images: Iterable[BatchImage], model_ref: ModelRef, params: Params, out: Path,
                  top_k: int = 3, batch_size: int = 64) -> dict[str, Any]:
    """Classify every image and write the predictions and summary into ``out`` (replaced whole).

    Args:
        images: from :func:`read_batch`.
        model_ref: the model and its name in the outputs.
        params: validated params (``validate`` rules, ``common.device``).
        out: the output folder.
        top_k: classes and probabilities kept per image (at most the number of classes).
        batch_size: images per forward pass.
    Returns:
        The summary (also written as summary.json).
    """
    model = LoadedModel.load(model_ref.directory, select_device(params.common.device))
    k = max(1, min(top_k, len(model.classes)))
    settings = ProfileSettings(max_pixels=params.validate_.max_pixels, stats_max_side=params.validate_.stats_max_side)
    transform = model.preprocessing.transform()
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], torch.Tensor]] = []  # (row, the model's input): 48 KB at 64 px
    seconds, started = 0.0, time.perf_counter()
    for image in progress(images, "predict", unit="image"):
        row = {"id": "", "source": image.source, "label": image.label, "status": "refused", "reason": image.error,
               "warning": None}
        rows.append(row)
        if image.data is None:
            continue
        admitted, rgb = admit_image(image.data, settings)
        row["id"] = admitted["sha256"][:16]
        row["reason"], row["warning"] = image_refusal(admitted, params.validate_)
        if row["reason"] is None:  # it decoded (else the refusal says so): rgb is the image
            pending.append((row, transform(rgb)))
        if len(pending) >= _CHUNK:
            seconds += _classify(model, pending, k, batch_size)
            pending = []
    if pending:
        seconds += _classify(model, pending, k, batch_size)
    if not rows:
        raise ValueError("the batch holds no images")
    frame = _frame(rows, k, model_ref, model.card["state_dict_sha256"])
    summary = _summary(frame, model_ref, model.classes, seconds, time.perf_counter() - started)
    with atomic_dir(out) as tmp:
        frame.to_parquet(tmp / f"{PREDICTIONS}.parquet", index=False)
        frame.to_csv(tmp / f"{PREDICTIONS}.csv", index=False)
        write_json(tmp / "summary.json", summary)
    return summary


def _classify(model: LoadedModel, pending: list[tuple[dict[str, Any], torch.Tensor]], k: int,
              batch_size: int) -> float:
    """Fill the rows' predictions in place; returns the seconds spent in forward passes."""
    inputs = [x for _, x in pending]
    probs, _, per_second = model.predict(model.input_batches(inputs, batch_size), desc=f"{model.name} forward")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for (row, _), ranked, p in zip(pending, order, probs):
        row.update(status="predicted", predicted=model.classes[ranked[0]], confidence=float(p[ranked[0]]),
                   **{f"class_{j + 1}": model.classes[c] for j, c in enumerate(ranked)},
                   **{f"prob_{j + 1}": float(p[c]) for j, c in enumerate(ranked)})
    return len(inputs) / per_second


def _frame(rows: list[dict[str, Any]], k: int, model_ref: ModelRef, sha256: str) -> pd.DataFrame:
    """The predictions table, the same columns for every row (refused rows have empty predictions)."""
    columns = ["id", "source", "label", "status", "reason", "warning", "predicted", "confidence",
               *(f"{kind}_{j + 1}" for j in range(k) for kind in ("class", "prob"))]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    return frame.assign(model_version=model_ref.version, model_sha256=sha256)


def _summary(frame: pd.DataFrame, model_ref: ModelRef, classes: list[str], forward_s: float,
             total_s: float) -> dict[str, Any]:
    predicted = frame[frame["status"] == "predicted"]
    refused = frame[frame["status"] == "refused"]
    labelled = predicted[predicted["label"].isin(classes)]  # a folder or label that names one of the classes
    return {
        "model_version": model_ref.version, "images": int(len(frame)), "predicted": int(len(predicted)),
        "refused": int(len(refused)), "with_warning": int(frame["warning"].notna().sum()),
        "predicted_classes": {str(c): int(n) for c, n in predicted["predicted"].value_counts().sort_index().items()},
        "refusals": [{"source": r.source, "reason": r.reason} for r in refused.itertuples()][:100],
        # a batch whose folders or label column name the classes: how often the model agrees with them
        "labelled": int(len(labelled)),
        "accuracy_on_labelled": (float((labelled["predicted"] == labelled["label"]).mean()) if len(labelled) else None),
        "images_per_s": round(len(predicted) / forward_s, 1) if forward_s > 0 else None,
        "seconds": round(total_s, 2),
    }
