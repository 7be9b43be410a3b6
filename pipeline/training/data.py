"""The datasets a training run reads, through the model's own preprocessing (plus augmentation)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

from torch.utils.data import Dataset

from pipeline.data.shards import ShardImageDataset
from pipeline.models.preprocess import Preprocessing
from pipeline.training.augment import augment_steps, resolve_augment

__all__ = ["TrainData", "Repeated", "ResizedImages", "small_data_batch", "training_data", "CACHE_BYTES"]
# a run keeps its images decoded and resized in memory up to this size (uint8 at the input side): a small train
# set is visited hundreds of times (20 images, 700 steps of 8), and decoding and resizing them on each visit
# took a tenth of a scratch run at 64 px (more for large photos); above it, images are read on each visit
CACHE_BYTES = 512 * 2**20


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


class ResizedImages(Dataset):
    """A run's images through ``finish`` (augmentation and normalisation) on every visit, from a cache of the
    decoded and resized images filled on the first visit. An item equals the uncached transform's, random
    draws included (the resize draws none). :meth:`through` is another finish over the same cache (the
    augmented and plain train sets share one)."""

    def __init__(self, source: ShardImageDataset, finish: Callable, cache: list | None = None):
        self.source, self.finish = source, finish  # source yields (uint8 tensor at the input size, label)
        self._cache = cache if cache is not None else [None] * len(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        if self._cache[index] is None:
            self._cache[index] = self.source[index]
        image, label = self._cache[index]
        return self.finish(image), label

    def through(self, finish: Callable) -> "ResizedImages":
        """The same images (and cache) through another finish."""
        return ResizedImages(self.source, finish, self._cache)


def _images(preprocessing: Preprocessing, dataset: str | os.PathLike, split: str, ids: Sequence[str] | None,
            augment: Sequence, cached: bool) -> Dataset:
    if not cached:
        return ShardImageDataset(dataset, split, preprocessing.transform(augment), ids=ids)
    return ResizedImages(ShardImageDataset(dataset, split, preprocessing.resized(), ids=ids),
                         preprocessing.finish(augment))


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
    val_source = ShardImageDataset(dataset, "val", preprocessing.resized(), ids=val_ids)
    cached = (len(train_ids) + len(val_source)) * 3 * preprocessing.image_size ** 2 <= CACHE_BYTES
    train = _images(preprocessing, dataset, "train", train_ids, steps, cached)
    plain = train.through(preprocessing.finish()) if cached else _images(preprocessing, dataset, "train", train_ids,
                                                                            (), False)
    data = TrainData(train=Repeated(train, min_epoch_items), train_plain=plain,
                     val=ResizedImages(val_source, preprocessing.finish()) if cached else _images(
                         preprocessing, dataset, "val", val_ids, (), False), augmented=bool(steps))
    if len(data.val) == 0:
        raise ValueError(f"{dataset}: the val split is empty (early stopping needs it)")
    return data
