"""The datasets a training run reads (pipeline/training/data.py), and the tiny learnable data of the training
tests (tests/support/training_data.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.shards import ShardImageDataset, verify_dataset
from pipeline.models.preprocess import Preprocessing
from pipeline.training import data as run_data
from pipeline.training.augment import augment_steps
from tests.support.training_data import SIZE, write_dataset

PREPROCESSING = Preprocessing(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_written_dataset_reads_back_with_learnable_labels(tmp_path):
    dataset = write_dataset(tmp_path / "ds", {"train": 12, "val": 6})
    assert verify_dataset(dataset) == 18
    train = ShardImageDataset(dataset, "train")
    image, label = train[4]
    assert image.size == (SIZE, SIZE) and label == 1
    # the class square is where the label says
    pixels = np.asarray(image)
    cell = SIZE // 3
    assert pixels[cell:2 * cell, cell:2 * cell].min() == 230 and pixels[:cell, :cell].max() < 90


@pytest.mark.parametrize("cache_bytes", [run_data.CACHE_BYTES, 0])
def test_a_run_reads_the_same_tensors_with_or_without_its_image_cache(tmp_path, monkeypatch, cache_bytes):
    monkeypatch.setattr(run_data, "CACHE_BYTES", cache_bytes)
    dataset = write_dataset(tmp_path / "ds", {"train": 6, "val": 3})
    ids = ShardImageDataset(dataset, "train").rows["id"].tolist()[:4]
    data = run_data.training_data(PREPROCESSING, dataset, ids, "light", min_epoch_items=10)
    assert isinstance(data.train.dataset, run_data.ResizedImages) == (cache_bytes > 0)
    plain = ShardImageDataset(dataset, "train", PREPROCESSING.transform(), ids=ids)
    augmented = ShardImageDataset(dataset, "train", PREPROCESSING.transform(augment_steps("light", 24)), ids=ids)
    val = ShardImageDataset(dataset, "val", PREPROCESSING.transform())
    for visit in range(2):  # the first visit fills the cache, the second reads it
        for i in range(4):
            assert torch.equal(data.train_plain[i][0], plain[i][0]) and data.train_plain[i][1] == plain[i][1]
            torch.manual_seed(visit * 10 + i)
            mine = data.train[i + 4 * visit][0]  # the cycled set: item i + 4 is image i again
            torch.manual_seed(visit * 10 + i)
            assert torch.equal(mine, augmented[i][0])  # the same random draws give the same image
        assert all(torch.equal(data.val[j][0], val[j][0]) for j in range(3))
    assert len(data.train) == 10 and len(data.val) == 3
