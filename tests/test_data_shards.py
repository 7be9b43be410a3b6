"""Shard writer and readers: offsets, random access, streaming, torch Dataset, reproducibility, and the
gate's quarantine as a value the readers take."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.common.io import sha256_file
from pipeline.data import shards
from pipeline.data.shards import (GatedDataset, ShardImageDataset, ShardWriter, iter_records, open_image,
                                  read_classes, read_image_bytes, read_manifest, verify_dataset, write_classes,
                                  write_manifest)


def _png(seed: int, size: int = 12, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _write_dataset(dataset: Path, count: int = 30, shard_bytes: int = 4096) -> list[bytes]:
    """A small dataset of random PNGs, written with the real writer into several shards."""
    images = [_png(i, mode="L" if i % 5 == 0 else "RGB") for i in range(count)]
    rows = []
    with ShardWriter(dataset / shards.SHARDS_DIR, shard_bytes) as writer:
        for i, data in enumerate(images):
            sha = hashlib.sha256(data).hexdigest()
            shard, offset, length = writer.add(f"{sha[:16]}.png", data)
            rows.append(dict(id=sha[:16], source_path=f"src/{i}.png", label=str(i % 3), label_idx=i % 3,
                             split=("train", "val", "test")[i % 3], sha256=sha, width=12, height=12,
                             mode="L" if i % 5 == 0 else "RGB", bytes=len(data), shard=shard, offset=offset,
                             length=length, in_budget=True))
    write_manifest(dataset, pd.DataFrame(rows))
    write_classes(dataset, ["0", "1", "2"])
    return images


def test_offsets_point_at_the_tar_members_and_shards_roll(tmp_path):
    images = _write_dataset(tmp_path / "ds")
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["shard"].nunique() > 2, "a 4 KiB shard size must spread 30 images over several shards"
    for shard, rows in manifest.groupby("shard"):
        path = tmp_path / "ds" / "shards" / shard
        assert path.stat().st_size <= 4096 + 2 * 10240  # target + the tar end blocks/record padding
        with tarfile.open(path) as tar:  # standard tar tools read the shards
            members = {m.name: m for m in tar.getmembers()}
        for row in rows.itertuples():
            member = members[f"{row.id}.png"]
            assert (member.offset_data, member.size) == (row.offset, row.length)
    assert [read_image_bytes(tmp_path / "ds", row) for _, row in manifest.iterrows()] == images


def test_iter_records_streams_every_image_and_filters_by_split(tmp_path):
    images = _write_dataset(tmp_path / "ds")
    got = {row["source_path"]: data for row, data in iter_records(tmp_path / "ds")}
    assert got == {f"src/{i}.png": data for i, data in enumerate(images)}
    val = list(iter_records(tmp_path / "ds", split="val"))
    assert len(val) == 10 and all(row["split"] == "val" for row, _ in val)
    assert verify_dataset(tmp_path / "ds") == 30


def test_open_image_by_id_and_unknown_id(tmp_path):
    images = _write_dataset(tmp_path / "ds")
    image_id = hashlib.sha256(images[5]).hexdigest()[:16]
    image = open_image(tmp_path / "ds", image_id)
    assert (image.size, image.mode) == ((12, 12), "RGB")  # as the models see it
    assert image.tobytes() == Image.open(io.BytesIO(images[5])).convert("RGB").tobytes()
    with pytest.raises(KeyError, match="nope"):
        open_image(tmp_path / "ds", "nope")


def test_dataset_in_dataloader_workers(tmp_path):
    _write_dataset(tmp_path / "ds")
    to_array = lambda image: np.asarray(image, dtype=np.float32)  # noqa: E731
    dataset = ShardImageDataset(tmp_path / "ds", split="train", transform=to_array)
    assert len(dataset) == 10 and set(dataset.labels) == {0}
    serial = [dataset[i][0] for i in range(len(dataset))]
    assert serial[0].shape == (12, 12, 3)  # grayscale is converted to RGB
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in batches]), np.stack(serial))
    dataset.close()


def test_dataset_selects_ids_in_order_and_rejects_unknown(tmp_path):
    _write_dataset(tmp_path / "ds")
    ids = read_manifest(tmp_path / "ds")["id"].tolist()[::-7]
    dataset = ShardImageDataset(tmp_path / "ds", ids=ids)
    assert dataset.rows["id"].tolist() == ids
    with pytest.raises(KeyError, match="not in the selection"):
        ShardImageDataset(tmp_path / "ds", split="val", ids=["missing"])
    with pytest.raises(ValueError, match="'holdout'"):
        ShardImageDataset(tmp_path / "ds", split="holdout")


def test_shards_are_byte_reproducible(tmp_path):
    _write_dataset(tmp_path / "a")
    _write_dataset(tmp_path / "b")
    for shard in sorted((tmp_path / "a" / "shards").iterdir()):
        assert sha256_file(shard) == sha256_file(tmp_path / "b" / "shards" / shard.name)


def test_missing_and_damaged_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        read_manifest(tmp_path)
    _write_dataset(tmp_path / "ds")
    assert read_classes(tmp_path / "ds") == ["0", "1", "2"]
    shard = tmp_path / "ds" / "shards" / "shard-00000.tar"
    shard.write_bytes(shard.read_bytes()[:600])
    with pytest.raises(ValueError, match="shard-00000.tar: truncated"):
        list(iter_records(tmp_path / "ds"))
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard-00000.tar: shard missing"):
        open_image(tmp_path / "ds", read_manifest(tmp_path / "ds")["id"].iloc[0])


def test_quarantine_is_the_value_a_read_is_given(tmp_path):
    """Two datasets in one process: only the read given a GatedDataset leaves its ids out, and the same
    directory read as a plain path afterwards has every row again (nothing is remembered between reads)."""
    _write_dataset(tmp_path / "a")
    _write_dataset(tmp_path / "b")
    ids = read_manifest(tmp_path / "a")["id"].tolist()
    left_out = frozenset(ids[:3])  # one train, one val, one test image
    gated = GatedDataset(tmp_path / "a", left_out)
    assert os.fspath(gated) == str(gated) == str(tmp_path / "a")

    assert read_manifest(gated)["id"].tolist() == ids[3:]
    assert [row["id"] for row, _ in iter_records(gated)] == sorted(ids[3:], key=ids.index)
    assert verify_dataset(gated) == 27
    train = ShardImageDataset(gated, "train")
    assert len(train) == 9 and not left_out & set(train.rows["id"])
    with pytest.raises(KeyError, match="not in the selection"):
        ShardImageDataset(gated, ids=[ids[0]])
    with pytest.raises(KeyError, match=ids[1]):
        open_image(gated, ids[1])

    assert len(read_manifest(tmp_path / "b")) == 30  # the other dataset: no quarantine given, none applied
    assert read_manifest(tmp_path / "a")["id"].tolist() == ids  # the same directory as a plain path: every row
    assert len(ShardImageDataset(tmp_path / "a", "train")) == 10 and open_image(tmp_path / "a", ids[1])
    assert len(read_manifest(GatedDataset(tmp_path / "a"))) == 30  # a gate that quarantined nothing
