"""Pooled pre-logit features of a zoo model over dataset images, computed once and cached on disk.

Inputs: a dataset directory (docs/CONTRACTS.md layout), a zoo model name, a cache folder.
Outputs: ``<cache>/<model>-<key>.npz`` holding ``features`` [N, D] float32, ``labels`` [N] int64,
``ids`` [N] and ``meta`` (JSON). The key hashes the model name, the weights' sha256, the
preprocessing (image size, mean/std, interpolation) and the dataset version (sha256 over the image
hashes of the rows used, in order), so any change to those computes afresh and nothing stale is reused.
Used by ``select`` (scoring) and by the training stages (linear probe, frozen backbone).
No params section of its own: callers pass image size, device and batch size.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from pipeline.common.io import atomic_path
from pipeline.common.logs import get_logger, progress
from pipeline.data.shards import ShardImageDataset, read_manifest
from pipeline.zoo import WeightsRef, create_model, get_spec
from pipeline.zoo.specs import ModelSpec
from pipeline.zoo.weights import check_sha256, locate_weights

__all__ = ["FeatureSet", "get_features", "extract_features", "eval_transform", "dataset_version", "feature_key",
           "weights_digest"]
log = get_logger(__name__)
_FORMAT = 1  # bump when the way features are computed changes: old cache entries stop matching


@dataclass(frozen=True)
class FeatureSet:
    """Embeddings of a list of images, in the order of ``ids``."""

    features: np.ndarray  # [N, D] float32
    labels: np.ndarray  # [N] int64
    ids: list[str]
    key: str  # cache key (sha256 hex)
    path: Path  # the cache file
    seconds: float  # time spent computing them now (0.0 when read from the cache)
    weights_sha256: str


def eval_transform(spec: ModelSpec, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic preprocessing for a model: RGB, resize to a square, scale, normalise."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    return v2.Compose([_to_rgb, v2.PILToTensor(),
                       v2.Resize((image_size, image_size), interpolation=mode, antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))])


def _to_rgb(image: Image.Image) -> Image.Image:
    # Grayscale (digits: mode L) and palette images feed 3-channel ImageNet networks as RGB.
    return image.convert("RGB")


def dataset_version(image_sha256: Sequence[str]) -> str:
    """Hash of the image hashes of the rows used, in order: the data part of the cache key."""
    return hashlib.sha256("\n".join(image_sha256).encode()).hexdigest()


def feature_key(spec: ModelSpec, weights_sha256: str, image_size: int, data_version: str) -> str:
    """Cache key of one (model, weights, preprocessing, data) combination."""
    parts = {"format": _FORMAT, "model": spec.name, "arch": spec.arch, "weights": weights_sha256,
             "image_size": image_size, "mean": list(spec.mean), "std": list(spec.std),
             "interpolation": spec.interpolation, "data": data_version}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def weights_digest(spec: ModelSpec, weights: WeightsRef | None = None, hub_dir: str | os.PathLike | None = None,
                   allow_download: bool = False, seed: int = 0) -> str:
    """The sha256 of a model's weights file after checking it (``random-init:<seed>`` for the controls)."""
    ref = weights or spec.weights
    if ref.is_random_init:
        return f"random-init:{seed}"
    return check_sha256(locate_weights(ref, hub_dir, allow_download), ref.sha256)


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, device: torch.device,
                     desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Run a timm-API model over a loader in eval mode and collect pooled pre-logit features.

    Args:
        model: a model with ``forward_features`` and ``forward_head(x, pre_logits=True)``.
        loader: yields (images, labels) batches.
        device: where to run.
        desc: progress bar label.
    Returns:
        (features [N, D] float32, labels [N] int64).
    """
    model.eval().to(device)
    feats, labels = [], []
    for images, targets in progress(loader, desc, unit="batch"):
        out = model.forward_head(model.forward_features(images.to(device, non_blocking=True)), pre_logits=True)
        feats.append(out.float().cpu().numpy())
        labels.append(np.asarray(targets, dtype=np.int64))
    dim = getattr(model, "num_features", 0)
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
            np.concatenate(labels) if labels else np.zeros(0, np.int64))


def get_features(model_name: str, dataset_dir: str | os.PathLike, cache_dir: str | os.PathLike, *,
                 split: str | None = "train", ids: Sequence[str] | None = None, image_size: int = 64,
                 device: torch.device | str = "cpu", batch_size: int = 64, num_workers: int = 0,
                 weights: WeightsRef | None = None, hub_dir: str | os.PathLike | None = None,
                 allow_download: bool = False, seed: int = 0) -> FeatureSet:
    """Features of a zoo model over a dataset split (or given ids), from the cache when it has them.

    Args:
        model_name: zoo name (``pipeline.zoo.list_models()``, ``timm:<arch>``, ``<name>.random_init``).
        dataset_dir: the dataset directory.
        cache_dir: the feature cache folder.
        split: ``train`` / ``val`` / ``test``, or None for all rows.
        ids: image ids to use, in this order (default: every row of the split, in manifest order).
        image_size: square input side.
        device: where to run the model.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        weights: user-supplied weights overriding the spec's.
        hub_dir: torch hub folder.
        allow_download: allow fetching weights from the internet.
        seed: initialisation seed (random-init controls only).
    Returns:
        The FeatureSet.
    Raises:
        KeyError: unknown model; WeightsUnavailable / WeightsRejected: weights missing or wrong.
    """
    spec = get_spec(model_name)
    rows = read_manifest(dataset_dir)
    rows = rows if split is None else rows[rows["split"] == split]
    if ids is not None:
        rows = rows.set_index("id", drop=False).loc[list(ids)]
    digest = weights_digest(spec, weights, hub_dir, allow_download, seed)
    key = feature_key(spec, digest, image_size, dataset_version(rows["sha256"].tolist()))
    path = Path(cache_dir) / f"{spec.name.replace(':', '_')}-{key[:16]}.npz"
    if path.is_file():
        return _read_cache(path, key, digest)
    start = time.perf_counter()
    model = create_model(model_name, 0, weights=weights, hub_dir=hub_dir, allow_download=allow_download, seed=seed)
    dataset = ShardImageDataset(dataset_dir, split, eval_transform(spec, image_size), ids=rows["id"].tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, labels = extract_features(model, loader, torch.device(device), desc=f"features {spec.name}")
    seconds = time.perf_counter() - start
    meta = {"key": key, "model": spec.name, "weights_sha256": digest, "image_size": image_size,
            "rows": len(labels), "seconds": round(seconds, 3)}
    _write_cache(path, features, labels, rows["id"].tolist(), meta)
    log.info("%s: %d x %d features in %.1fs -> %s", spec.name, *features.shape, seconds, path)
    return FeatureSet(features, labels, rows["id"].tolist(), key, path, seconds, digest)


def _write_cache(path: Path, features: np.ndarray, labels: np.ndarray, ids: list[str], meta: dict) -> None:
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:  # a handle: savez adds no suffix
        np.savez(fh, features=features.astype(np.float32), labels=labels, ids=np.array(ids, dtype=str),
                 meta=np.array(json.dumps(meta)))


def _read_cache(path: Path, key: str, digest: str) -> FeatureSet:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("key") != key:
            raise ValueError(f"{path}: feature cache entry has key {meta.get('key')!r}, expected {key!r} "
                             "(delete the file)")
        return FeatureSet(data["features"], data["labels"], data["ids"].tolist(), key, path, 0.0, digest)
