"""The tiny learnable data of the training tests (tests/support/training_data.py) reads back as written."""

from __future__ import annotations

import numpy as np

from pipeline.data.shards import ShardImageDataset, verify_dataset
from tests.support.training_data import SIZE, write_dataset


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
