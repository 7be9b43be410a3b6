"""The datasets a training run reads, through the model's own preprocessing (plus augmentation)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from torch.utils.data import Dataset

from pipeline.data.shards import ShardImageDataset
from pipeline.models.preprocess import Preprocessing
from pipeline.training.augment import augment_steps, resolve_augment

__all__ = ["TrainData", "training_data"]


@dataclass
class TrainData:
    """The datasets a run reads: (image tensor, label) items."""

    train: Dataset  # training images through the training (augmenting) transform
    train_plain: Dataset  # the same images through the eval transform: the feature-cache source
    val: Dataset
    augmented: bool  # whether ``train`` draws random augmentations


def training_data(preprocessing: Preprocessing, dataset: str | os.PathLike, train_ids: Sequence[str],
                  augment: str, val_ids: Sequence[str] | None = None) -> TrainData:
    """Train (augmented and plain) and val datasets of a run.

    Args:
        preprocessing: the model's preprocessing.
        dataset: the dataset directory.
        train_ids: the training images (inside the label budget, or a curve subset).
        augment: ``finetune.augment`` (``auto`` is resolved by the input size).
        val_ids: the val images that pick the best epoch (default: the whole val split).
    Returns:
        The datasets.
    Raises:
        ValueError: no training images, or an empty val split (early stopping needs it).
    """
    if not len(train_ids):
        raise ValueError(f"{dataset}: no training images to train on")
    name = resolve_augment(augment, preprocessing.image_size)
    steps = augment_steps(name, preprocessing.image_size)
    data = TrainData(train=ShardImageDataset(dataset, "train", preprocessing.transform(steps), ids=train_ids),
                     train_plain=ShardImageDataset(dataset, "train", preprocessing.transform(), ids=train_ids),
                     val=ShardImageDataset(dataset, "val", preprocessing.transform(), ids=val_ids),
                     augmented=bool(steps))
    if len(data.val) == 0:
        raise ValueError(f"{dataset}: the val split is empty (early stopping needs it)")
    return data
