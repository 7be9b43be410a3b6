"""Hash splits (stable as data grows, seeded, near the asked fractions), label budgets, packing and dedupe."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from pipeline.data.pack import DuplicateLabelError, describe_image, pack_records
from pipeline.data.shards import iter_records
from pipeline.data.sources.base import Record
from pipeline.data.splits import assign_budget, assign_splits, split_summary
from tests.support.badimages import good_png


def _frame(n: int, classes: int = 4, start: int = 0) -> pd.DataFrame:
    sha = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]
    return pd.DataFrame({"sha256": sha, "label": [str(i % classes) for i in range(start, start + n)]})


def test_splits_are_stable_when_images_are_added():
    old = _frame(2000)
    old["split"] = assign_splits(old["sha256"], 0.15, 0.15, seed=0)
    grown = pd.concat([old[["sha256", "label"]], _frame(3000, start=2000)], ignore_index=True)
    grown["split"] = assign_splits(grown["sha256"], 0.15, 0.15, seed=0)
    assert grown["split"].iloc[:2000].tolist() == old["split"].tolist()
    shares = grown["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.15) < 0.02 and abs(shares["val"] - 0.15) < 0.02
    per_class = pd.crosstab(grown["label"], grown["split"], normalize="index")
    assert per_class["test"].between(0.11, 0.19).all()  # stratified in expectation: each class near 15%


def test_another_seed_gives_another_split():
    frame = _frame(500)
    a, b = (assign_splits(frame["sha256"], 0.2, 0.2, seed=s) for s in (0, 1))
    assert a.equals(assign_splits(frame["sha256"], 0.2, 0.2, seed=0))
    assert (a != b).mean() > 0.3


def test_budget_k_per_class_and_fraction():
    frame = _frame(400)
    frame["split"] = assign_splits(frame["sha256"], 0.15, 0.15, seed=0)
    inside = assign_budget(frame, per_class=5, fraction=None, seed=0)
    train = frame["split"] == "train"
    assert frame[inside & train]["label"].value_counts().tolist() == [5, 5, 5, 5]
    assert inside[~train].all()
    frac = assign_budget(frame, per_class=None, fraction=0.25, seed=0)
    assert 0.15 < frac[train].mean() < 0.35
    assert assign_budget(frame, None, None, 0).all()
    frame["in_budget"] = inside
    summary = split_summary(frame, ["0", "1", "2", "3"])
    assert summary["train_in_budget"] == {c: 5 for c in "0123"} and sum(summary["sizes"].values()) == 400


def test_pack_records_dedupes_and_skips_with_reasons(tmp_path):
    png = [good_png(i, 8) for i in range(3)]
    records = [Record("a/0.png", "a", png[0]), Record("a/1.png", "a", png[1]), Record("a/copy.png", "a", png[0]),
               Record("b/2.png", "b", png[2]), Record("b/notes.txt", "b", b"not an image at all")]
    rows, skipped = pack_records(records, tmp_path / "shards", 1 << 20)
    assert [r["source_path"] for r in rows] == ["a/0.png", "a/1.png", "b/2.png"]
    assert {s.path: s.reason for s in skipped}["a/copy.png"] == "duplicate of a/0.png"
    assert {s.path: s.reason for s in skipped}["b/notes.txt"].startswith("not an image")
    assert rows[0]["id"] == describe_image(png[0])["sha256"][:16] and rows[0]["mode"] == "RGB"


def test_pack_records_names_both_paths_of_an_image_under_two_labels(tmp_path):
    png = good_png(1, 8)
    with pytest.raises(DuplicateLabelError, match=r"dogs/x.png \(label 'dogs'\) is the same image as cats/x.png"):
        pack_records([Record("cats/x.png", "cats", png), Record("dogs/x.png", "dogs", png)], tmp_path, 1 << 20)


def test_packed_bytes_round_trip(tmp_path):
    from pipeline.data.build import write_dataset

    png = [good_png(i, 8) for i in range(5)]
    rows, _ = pack_records([Record(f"x/{i}.png", "x", d) for i, d in enumerate(png)], tmp_path / "shards", 1 << 20)
    frame = pd.DataFrame(rows).assign(label_idx=0, split="train", in_budget=True)
    write_dataset(tmp_path, frame, ["x"])
    assert sorted(d for _, d in iter_records(tmp_path)) == sorted(png)
