"""The datasets a training run reads, through the model's own preprocessing (plus augmentation)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from torch.utils.data import Dataset

from pipeline.data.shards import ShardImageDataset
from pipeline.models.preprocess import Preprocessing
from pipeline.training.augment import augment_steps, resolve_augment

__all__ = ["TrainData", "Repeated", "small_data_batch", "training_data"]


@dataclass
class TrainData:
    """The datasets a run reads: (image tensor, label) items."""

    train: Dataset  # training images through the training (augmenting) transform
    train_plain: Dataset  # the same images through the eval transform: the feature-cache source
    val: Dataset
    augmented: bool  # whether ``train`` draws random augmentations


class Repeated(Dataset):
    """A dataset cycled to at least ``length`` items an epoch (each visit draws its own augmentation)."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length = dataset, max(len(dataset), int(length))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def small_data_batch(n_train: int, batch_size: int) -> int:
    """The batch of a run on ``n_train`` images: ``batch_size``, at most a quarter of them (at least 8, at most all),
    so that a small train set still takes several steps per pass."""
    return max(2, min(batch_size, max(8, n_train // 4), n_train))


def training_data(preprocessing: Preprocessing, dataset: str | os.PathLike, train_ids: Sequence[str],
                  augment: str, val_ids: Sequence[str] | None = None, min_epoch_items: int = 0) -> TrainData:
    """Train (augmented and plain) and val datasets of a run.

    Args:
        preprocessing: the model's preprocessing.
        dataset: the dataset directory.
        train_ids: the training images (inside the label budget, or a curve subset).
        augment: ``train.augment`` (``auto`` is resolved by the input size).
        val_ids: the val images that pick the best epoch (default: the whole val split).
        min_epoch_items: a smaller train set is cycled to this many items an epoch (``min_epoch_steps x
            batch``): with 20 images, an epoch of one step would end runs on noise.
    Returns:
        The datasets (``train_plain`` never repeated: the feature cache and the solved probe see each image once).
    Raises:
        ValueError: no training images, or an empty val split (early stopping needs it).
    """
    if not len(train_ids):
        raise ValueError(f"{dataset}: no training images to train on")
    name = resolve_augment(augment, preprocessing.image_size)
    steps = augment_steps(name, preprocessing.image_size)
    data = TrainData(train=Repeated(ShardImageDataset(dataset, "train", preprocessing.transform(steps), ids=train_ids),
                                    min_epoch_items),
                     train_plain=ShardImageDataset(dataset, "train", preprocessing.transform(), ids=train_ids),
                     val=ShardImageDataset(dataset, "val", preprocessing.transform(), ids=val_ids),
                     augmented=bool(steps))
    if len(data.val) == 0:
        raise ValueError(f"{dataset}: the val split is empty (early stopping needs it)")
    return data
