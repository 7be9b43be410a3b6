"""What the drift stage compares, for one image set: manifest rows, descriptors, embeddings, softmax.

Embeddings (pre-logits) and softmax outputs come from the fine-tuned model in one pass
(:class:`pipeline.models.LoadedModel`, its own preprocessing); descriptors come from the validation
profile (reference) or from the validation stage's own profile function run on the current set, so
both sides are measured alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.common.logs import get_logger
from pipeline.config import CommonParams, DriftParams
from pipeline.data.shards import iter_records, read_classes, read_manifest
from pipeline.models import LoadedModel
from pipeline.models.inference import probabilities

__all__ = ["SetOutputs", "group_name", "set_outputs", "reference_descriptors", "current_descriptors"]
log = get_logger(__name__)


@dataclass
class SetOutputs:
    """One image set, rows aligned: manifest, descriptors, embeddings (N, D), softmax (N, C)."""

    dataset: os.PathLike  # the directory, or the stage's GatedDataset (its quarantine left out)
    manifest: pd.DataFrame
    descriptors: pd.DataFrame
    embeddings: np.ndarray
    probs: np.ndarray
    classes: list[str]

    def labels(self) -> pd.Series | None:
        """True class names, or None when any row has no label (an unlabelled batch)."""
        labels = self.manifest.get("label")
        if labels is None or labels.isna().any() or (labels.astype(str) == "").any():
            return None
        return labels.astype(str).reset_index(drop=True)

    def accuracy(self, rows: Sequence[int] | None = None) -> float | None:
        """Top-1 accuracy of the model on the set (or on ``rows`` of it); None without labels."""
        labels = self.labels()
        if labels is None:
            return None
        index = np.arange(len(labels)) if rows is None else np.asarray(rows)
        predicted = np.asarray(self.classes, dtype=object)[self.probs[index].argmax(1)]
        return float((predicted == labels.to_numpy()[index]).mean())

    def subset(self, rows: np.ndarray) -> "SetOutputs":
        """The same set restricted to ``rows`` (positions), e.g. one split of a train+val reference."""
        return SetOutputs(self.dataset, self.manifest.iloc[rows].reset_index(drop=True),
                          self.descriptors.iloc[rows].reset_index(drop=True), self.embeddings[rows], self.probs[rows],
                          self.classes)

    def origin(self, i: int) -> dict[str, Any]:
        """Group, corruption and severity of row ``i`` when the set is a shift set or a batch, else {}."""
        row = self.manifest.iloc[i]
        if "corruption" not in self.manifest.columns:
            return {}
        corruption, severity = str(row["corruption"]), int(row["severity"])
        return {"group": group_name(corruption, severity), "corruption": corruption, "severity": severity}


def group_name(corruption: str, severity: int) -> str:
    """How a group of the current set is shown: "clean control", "gaussian_noise 5", "batch:week-48"."""
    if corruption == "none":
        return "clean control"
    return corruption if severity == 0 else f"{corruption} {severity}"


def set_outputs(dataset: os.PathLike, split: str | None, model: LoadedModel, cfg: DriftParams,
                descriptors: pd.DataFrame) -> SetOutputs:
    """Embed and classify every image of a dataset split; align descriptors to the same rows.

    Args:
        dataset: dataset directory, or a GatedDataset (its quarantined images are left out).
        split: "train"/"val"/"test", several joined by "+" ("train+val"), or None for every row.
        model: the loaded fine-tuned model.
        cfg: ``params.drift`` (inference batch size).
        descriptors: descriptor table with an ``id`` column covering these images.
    Returns:
        The set's outputs, rows in manifest order.
    """
    classes = _check_classes(dataset, model)
    if split is None or "+" not in split:
        images = model.inputs(dataset, split)
    else:  # e.g. "train+val": the splits' rows (quarantined images left out, as in any split read)
        ids = [i for part in split.split("+") for i in model.inputs(dataset, part).rows["id"]]
        images = model.inputs(dataset, None, ids=ids)
    if len(images) == 0:
        splits = sorted(read_manifest(dataset)["split"].unique())
        raise ValueError(f"{dataset}: no images in split {split!r} (splits: {splits})")
    out = model.outputs(images, ("embeddings", "logits"), batch_size=cfg.inference_batch_size,
                        desc=f"embed {Path(dataset).name}")
    rows = images.rows.reset_index(drop=True)
    return SetOutputs(dataset, rows, _align(descriptors, rows["id"], dataset), out["embeddings"].numpy(),
                      probabilities(out["logits"]), classes)


def _check_classes(dataset: os.PathLike, model: LoadedModel) -> list[str]:
    classes = read_classes(dataset)
    if list(classes) != model.classes:
        raise ValueError(f"{dataset}/classes.json {classes} differs from the model's classes {model.classes}")
    return model.classes


def _align(descriptors: pd.DataFrame, ids: pd.Series, where: os.PathLike) -> pd.DataFrame:
    indexed = descriptors.drop_duplicates("id").set_index("id")
    missing = ids[~ids.isin(indexed.index)]
    if len(missing):
        raise ValueError(f"descriptors for {where} lack {len(missing)} image id(s), e.g. {missing.iloc[0]!r}: "
                         "is the profile from this dataset?")
    return indexed.loc[ids.to_numpy()].reset_index()


def reference_descriptors(profile: Path) -> pd.DataFrame:
    """Read the validation profile (profile.parquet) of the reference dataset."""
    if not profile.is_file():
        raise FileNotFoundError(f"{profile}: validation profile not found (run `tlops validate` first)")
    table = pd.read_parquet(profile)
    if "id" not in table.columns:
        raise ValueError(f"{profile}: no 'id' column; not a validation profile")
    return table


def current_descriptors(current: Path, common: CommonParams) -> pd.DataFrame:
    """Profile the current set with the validation stage's own profile function (same descriptors)."""
    from pipeline.validation.profile import profile_records

    total = len(read_manifest(current))
    return profile_records(iter_records(current), total, workers=max(1, common.num_workers)).to_pandas()
