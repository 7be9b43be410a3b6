"""Tiny learnable data for the training tests: tensors in memory and a real shard dataset on disk.

Each class is a bright square at its own place on a noisy background, so a few steps of training
separate them.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from pipeline.data.shards import SHARDS_DIR, ShardWriter, write_classes, write_manifest

__all__ = ["TINY_MODEL", "SIZE", "pattern_images", "tensor_dataset", "write_dataset", "write_selection"]

TINY_MODEL = "timm:test_efficientnet.random_init"  # timm test network, untrained: 0.1M params, BatchNorm, 7 blocks
SIZE = 32


def pattern_images(count: int, classes: int = 3, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 RGB images [N, size, size, 3] and their labels (round-robin classes)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    images = rng.integers(0, 90, (count, size, size, 3), dtype=np.uint8)
    cell = size // classes
    for i, label in enumerate(labels):
        images[i, cell * label:cell * (label + 1), cell * label:cell * (label + 1), :] = 230
    return images, labels


def tensor_dataset(count: int, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Pattern images as normalised float tensors (mean/std 0.5) in a TensorDataset."""
    images, labels = pattern_images(count, classes, seed=seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    return TensorDataset(x, torch.from_numpy(labels).long())


def write_dataset(dataset: Path, per_split: dict[str, int], classes: int = 3) -> Path:
    """A real dataset directory (shards, manifest, classes, splits) of PNG pattern images."""
    rows, seed = [], 0
    with ShardWriter(dataset / SHARDS_DIR, 1 << 20) as writer:
        for split, count in per_split.items():
            images, labels = pattern_images(count, classes, seed=seed)
            seed += 1
            for image, label in zip(images, labels):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                data = buffer.getvalue()
                sha = hashlib.sha256(data).hexdigest()
                shard, offset, length = writer.add(f"{sha[:20]}.png", data)
                rows.append(dict(id=sha[:20], source_path=f"{split}/{len(rows)}.png", label=str(label),
                                 label_idx=int(label), split=split, sha256=sha, width=SIZE, height=SIZE, mode="RGB",
                                 bytes=len(data), shard=shard, offset=offset, length=length, in_budget=True))
    write_manifest(dataset, pd.DataFrame(rows))
    write_classes(dataset, [str(c) for c in range(classes)])
    (dataset / "splits.json").write_text(json.dumps(per_split))
    return dataset


def write_selection(path: Path, model: str = TINY_MODEL, probe: float | None = 0.9) -> Path:
    """A selection.json as `tlops select` writes it (the keys freeze reads)."""
    ranking = [{"name": model, "scores": {"linear_probe": {"value": probe}} if probe is not None else {},
                "weights": {"uri": "random-init", "sha256": None}}]
    path.write_text(json.dumps({"selected": model, "weights": {"uri": "random-init", "sha256": None},
                                "ranking": ranking}))
    return path
