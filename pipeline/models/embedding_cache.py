"""Pooled pre-logit embeddings of a loaded model over dataset images, computed once and cached on disk.

``<cache>/<model>-<key>.npz`` holds ``features`` [N, D] float32, ``labels`` [N] int64, ``ids`` [N] and
``meta`` (JSON). The key hashes the model name, the sha256 of its pretrained weights, its
preprocessing (image size, mean/std, interpolation) and the dataset version (sha256 over the image
hashes of the rows used, in order: read through the GatedDataset a stage passes, so without the images the
gate quarantined), so any change to those computes afresh and nothing stale is reused.
Used by ``select`` (scoring) and by the comparison's linear probes; the training loop's in-memory features
of a frozen backbone are pipeline/training/frozen_features.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.common.io import atomic_path
from pipeline.common.logs import get_logger
from pipeline.data.shards import dataset_version, read_manifest
from pipeline.models.loaded import LoadedModel

__all__ = ["FeatureSet", "cached_embeddings", "feature_key"]
log = get_logger(__name__)
_FORMAT = 2  # bump when the way features are computed changes: old cache entries stop matching


@dataclass(frozen=True)
class FeatureSet:
    """Embeddings of a list of images, in the order of ``ids``."""

    features: np.ndarray  # [N, D] float32
    labels: np.ndarray  # [N] int64
    ids: list[str]
    key: str  # cache key (sha256 hex)
    path: Path  # the cache file
    seconds: float  # time spent computing them now (0.0 when read from the cache)
    weights_sha256: str | None


def feature_key(model: LoadedModel, data_version: str) -> str:
    """Cache key of one (model, weights, preprocessing, data) combination."""
    parts = {"format": _FORMAT, "model": model.name, "arch": model.spec.arch, "weights": model.weights,
             "preprocessing": model.preprocessing.to_card(), "data": data_version}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_embeddings(model: LoadedModel, dataset_dir: str | os.PathLike, cache_dir: str | os.PathLike, *,
                      split: str | None = "train", ids: Sequence[str] | None = None, batch_size: int = 64,
                      num_workers: int = 0) -> FeatureSet:
    """Embeddings of a dataset split (or the given ids) by ``model``, from the cache when it has them.

    Args:
        model: a pretrained model (its weights' sha256 is part of the key).
        dataset_dir: the dataset directory, or a GatedDataset (its quarantined images are neither embedded
            nor part of the key; asking for one in ``ids`` is a KeyError).
        cache_dir: the feature cache folder.
        split: ``train`` / ``val`` / ``test``, or None for all rows.
        ids: image ids to use, in this order (default: every row of the split, in manifest order).
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
    Returns:
        The FeatureSet.
    """
    rows = read_manifest(dataset_dir)
    rows = rows if split is None else rows[rows["split"] == split]
    if ids is not None:
        rows = rows.set_index("id", drop=False).loc[list(ids)]
    key = feature_key(model, dataset_version(rows["sha256"].tolist()))
    path = Path(cache_dir) / f"{model.name.replace(':', '_')}-{key[:16]}.npz"
    sha = model.weights.get("sha256")
    if path.is_file():
        return _read_cache(path, key, sha)
    start = time.perf_counter()
    out = model.outputs(model.inputs(dataset_dir, split, rows["id"].tolist()), ("embeddings",), batch_size=batch_size,
                        num_workers=num_workers, desc=f"features {model.name}")
    features, labels = out["embeddings"].numpy(), out.labels.numpy()
    seconds = time.perf_counter() - start
    meta = {"key": key, "model": model.name, "weights": model.weights, "rows": len(labels),
            "seconds": round(seconds, 3)}
    _write_cache(path, features, labels, rows["id"].tolist(), meta)
    log.info("%s: %d x %d features in %.1fs -> %s", model.name, *features.shape, seconds, path)
    return FeatureSet(features, labels, rows["id"].tolist(), key, path, seconds, sha)


def _write_cache(path: Path, features: np.ndarray, labels: np.ndarray, ids: list[str], meta: dict) -> None:
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:  # a handle: savez adds no suffix
        np.savez(fh, features=features.astype(np.float32), labels=labels, ids=np.array(ids, dtype=str),
                 meta=np.array(json.dumps(meta)))


def _read_cache(path: Path, key: str, sha: str | None) -> FeatureSet:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("key") != key:
            raise ValueError(f"{path}: feature cache entry has key {meta.get('key')!r}, expected {key!r} "
                             "(delete the file)")
        return FeatureSet(data["features"], data["labels"], data["ids"].tolist(), key, path, 0.0, sha)
