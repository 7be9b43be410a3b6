"""Running a trained model over a dataset split: class probabilities, robustness table, pixel batches.

Inputs are dataset directories in the docs/CONTRACTS.md layout; a domain-shift set adds the
``corruption`` and ``severity`` columns that :func:`robustness` groups by.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pipeline.common.logs import progress
from pipeline.data.shards import ShardImageDataset
from pipeline.evaluation.metrics import rnd

__all__ = ["predict_probs", "robustness", "pixel_transform", "load_pixels"]


def _sync(device: torch.device) -> float:
    # CUDA runs asynchronously: wait for the kernels before reading the clock
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def predict_probs(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256,
                  desc: str = "predict") -> tuple[np.ndarray, np.ndarray, float]:
    """Softmax probabilities of a model over a dataset of (input, label).

    Args:
        model: the classifier (set to eval mode here).
        dataset: yields (input tensor, label index).
        device: where the model is.
        batch_size: images per forward pass.
        desc: progress bar label.
    Returns:
        (probs [N, classes] float64, labels [N] int, images per second of the forward passes alone).
    """
    model.eval()
    probs, labels, seconds = [], [], 0.0
    for inputs, targets in progress(DataLoader(dataset, batch_size=batch_size), desc, unit="batch"):
        inputs = inputs.to(device)
        began = _sync(device)
        probs.append(model(inputs).float().softmax(1).cpu().numpy())
        seconds += _sync(device) - began
        labels.append(np.asarray(targets, dtype=int))
    if not probs:
        raise ValueError(f"{desc}: the dataset is empty")
    probs_all = np.concatenate(probs).astype(np.float64)
    probs_all /= probs_all.sum(axis=1, keepdims=True)  # float32 softmax rows drift from 1 by ~1e-7
    return probs_all, np.concatenate(labels), len(probs_all) / max(seconds, 1e-9)


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


def pixel_transform(size: int) -> v2.Compose:
    """PIL image -> RGB float tensor in [0, 1] of ``size`` x ``size`` (no normalisation)."""
    return v2.Compose([v2.ToImage(), v2.RGB(), v2.Resize((size, size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True)])


def load_pixels(dataset_dir: str | os.PathLike, split: str, size: int, ids: Sequence[str] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images of a split as one [0, 1] pixel tensor (for attacks and visualisations).

    Args:
        dataset_dir: the dataset directory.
        split: train, val or test.
        size: square side in pixels.
        ids: only these image ids, in this order (default: the whole split).
    Returns:
        (images [N, 3, size, size], labels [N], ids).
    """
    dataset = ShardImageDataset(dataset_dir, split, pixel_transform(size), ids=ids)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    dataset.close()
    return torch.stack(images), torch.tensor(labels), dataset.rows["id"].tolist()
