"""The images a promotion is decided on, and the data record each registered version keeps for later ones.

A registered version keeps, under ``data/`` in the registry:

- ``data/test/``: its run's test split as a dataset directory (manifest, classes, shards), so that a
  later candidate is scored on the champion's test images too, not only on its own run's;
- ``data/seen.json``: the sha256 of every image its run trained or chose on (train and val splits).

The evaluation set is the candidate's test split plus the champion's registered test images,
deduplicated by content hash, without any image that either model trained or chose on (by hash: the
data may have grown and been split again between the two runs, so a former test image can now be in
the candidate's train split). A champion registered before versions kept data (or a change of task)
leaves only the candidate's side, and the record says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.common.io import read_json, write_json
from pipeline.data.shards import (SHARDS_DIR, ShardWriter, iter_records, read_classes, read_manifest, train_in_budget,
                                  write_classes, write_manifest)
from pipeline.evaluation.references import fit_pixel_probe, pixel_probe_predictions
from pipeline.models import LoadedModel

__all__ = ["EvaluationSet", "DataRecord", "evaluation_set", "predicted_classes",
           "majority_reference", "pixel_reference"]
_TEST, _SEEN = "test", "seen.json"
_SHARD_BYTES = 64 << 20
_TRAINED_ON = ("train", "val")  # the splits a model was fitted or chosen on


@dataclass
class EvaluationSet:
    """Test images from one or two dataset directories, in a fixed order.

    ``parts`` are (dataset directory, ids of its test split); ``labels`` and ``sha256`` follow the
    parts' order; ``record`` is what decision.json says of where the images came from."""

    parts: list[tuple[os.PathLike, list[str]]]
    labels: np.ndarray
    sha256: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataRecord:
    """One model's side of an evaluation: its test images (a dataset directory and the ids of its test
    split) and the sha256 of the images it trained or chose on."""

    directory: os.PathLike  # a dataset directory, or the run's GatedDataset (its quarantine left out)
    test: pd.DataFrame
    seen: set[str]

    @classmethod
    def of_dataset(cls, dataset: os.PathLike) -> "DataRecord":
        """The record of a run's dataset (its test split; train and val seen): kept as given, so that a
        GatedDataset's quarantine holds for every later read of it (:meth:`write`, the evaluation set)."""
        manifest = read_manifest(dataset)
        return cls(dataset, manifest[manifest["split"] == "test"],
                   set(manifest.loc[manifest["split"].isin(_TRAINED_ON), "sha256"].astype(str)))

    @classmethod
    def of_version(cls, data: Path) -> "DataRecord | None":
        """The record a registered version keeps in ``data`` (:meth:`write`); None when it has
        none (registered before versions kept one)."""
        if not (data / _SEEN).is_file() or not (data / _TEST).is_dir():
            return None
        test = read_manifest(data / _TEST)
        return cls(data / _TEST, test[test["split"] == "test"], set(read_json(data / _SEEN)["sha256"]))

    def write(self, dest: Path) -> Path:
        """Write this record as a registered version keeps it (``dest``: the version's ``data/``): the test
        images copied into a dataset directory of their own, and the hashes seen. Quarantined images (the
        validation gate's) are left out when ``directory`` is the run's GatedDataset."""
        test_dir, rows = dest / _TEST, []
        with ShardWriter(test_dir / SHARDS_DIR, _SHARD_BYTES) as writer:
            for row, data in iter_records(self.directory, "test"):
                row["shard"], row["offset"], row["length"] = writer.add(str(row["id"]), data)
                rows.append(row)
        write_manifest(test_dir, pd.DataFrame(rows, columns=self.test.columns))
        write_classes(test_dir, read_classes(self.directory))
        write_json(dest / _SEEN, {"splits": list(_TRAINED_ON), "sha256": sorted(self.seen)})
        return dest


def evaluation_set(candidate: DataRecord, classes: Sequence[str], champion: DataRecord | None,
                   champion_note: str) -> EvaluationSet:
    """The candidate's test images plus the champion's, deduplicated by hash, without any image either
    trained on (see the module docstring).

    Args:
        candidate: the candidate's data record.
        classes: the candidate's classes (images of other classes are left out and counted).
        champion: the champion's data record, or None (no champion, a change of task, an old version).
        champion_note: what the record says of the champion's side.
    """
    seen = {"candidate": candidate.seen}
    sides = [("candidate", candidate)]
    if champion is not None:
        seen["champion"] = champion.seen
        sides.append(("champion", champion))
    known, taken = set(classes), set()
    parts, labels, hashes = [], [], []
    record: dict[str, Any] = {"champion_data": champion_note, "from": {}, "duplicates": 0, "other_classes": 0,
                              "excluded_trained_on": {name: 0 for name in seen}}
    for side, data in sides:
        ids = []
        rows = data.test
        for image_id, sha, label in zip(rows["id"], rows["sha256"].astype(str), rows["label"].astype(str)):
            trained = [name for name, hashes_seen in seen.items() if sha in hashes_seen]
            if trained:
                for name in trained:
                    record["excluded_trained_on"][name] += 1
            elif sha in taken:
                record["duplicates"] += 1
            elif label not in known:
                record["other_classes"] += 1
            else:
                taken.add(sha)
                ids.append(str(image_id))
                labels.append(label)
                hashes.append(sha)
        record["from"][side] = len(ids)
        if ids:
            parts.append((data.directory, ids))
    labels_array = np.asarray(labels, dtype=object)
    record["images"] = len(labels)  # per class: the blessing's evidence check
    return EvaluationSet(parts, labels_array, np.asarray(hashes, dtype=object), record)


def predicted_classes(model: LoadedModel, images: EvaluationSet, batch_size: int = 256) -> np.ndarray:
    """The class name a model predicts for each image of the evaluation set, in its order."""
    if model.classes is None:
        raise ValueError(f"{model.name}: a model without class names cannot be compared by class")
    names = np.asarray(model.classes, dtype=object)
    predicted = [names[model.predict(model.inputs(directory, "test", ids), batch_size=batch_size,
                                     desc=f"{model.name} on the evaluation set")[0].argmax(1)]
                 for directory, ids in images.parts]
    return np.concatenate(predicted) if predicted else np.zeros(0, dtype=object)


def majority_reference(images: EvaluationSet) -> np.ndarray:
    """The best constant answer on the evaluation set (its largest class), for every image."""
    values, counts = np.unique(images.labels, return_counts=True)
    return np.full(len(images), values[counts.argmax()], dtype=object)


def pixel_reference(dataset: os.PathLike, images: EvaluationSet, cs: Sequence[float]) -> np.ndarray:
    """A logistic regression on raw pixels, fitted on the candidate's training labels (penalty chosen on its
    val split), predicting each image of the evaluation set."""
    manifest = read_manifest(dataset)
    classes = np.asarray(read_classes(dataset), dtype=object)
    train_ids = train_in_budget(manifest, dataset)["id"].tolist()
    val_ids = manifest.loc[manifest["split"] == "val", "id"].tolist()
    probe = fit_pixel_probe(dataset, train_ids, val_ids, len(classes), cs)
    predicted = [classes[pixel_probe_predictions(probe, directory, "test", ids)] for directory, ids in images.parts]
    return np.concatenate(predicted) if predicted else np.zeros(0, dtype=object)
