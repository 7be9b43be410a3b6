"""Cross-row checks: leakage by sha256 and perceptual hash, label conflicts, class counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.validation.checks import add_class_columns, add_leak_columns, class_table, hamming_partners


def _table(rows: list[tuple[str, str, str, str, str]], quarantined: set[str] = frozenset()) -> pd.DataFrame:
    """Rows of (id, label, split, sha256, phash hex)."""
    frame = pd.DataFrame(rows, columns=["id", "label", "split", "sha256", "phash"])
    frame["source_path"] = frame["label"] + "/" + frame["id"] + ".png"
    frame["quarantined"] = frame["id"].isin(quarantined)
    return frame


def test_hamming_partners_match_brute_force():
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 2**63, 700, dtype=np.uint64)
    pool = rng.integers(0, 2**63, 5000, dtype=np.uint64)  # 400 queries per block: two blocks
    nearest, distance = hamming_partners(queries, pool)
    sample = np.r_[0:10, 395:405, 690:700]  # both blocks and their boundary
    brute = np.array([[bin(int(q) ^ int(p)).count("1") for p in pool] for q in queries[sample]])
    assert (distance[sample] == brute.min(axis=1)).all()
    assert (brute[np.arange(len(sample)), nearest[sample]] == distance[sample]).all()


def test_same_bytes_in_two_splits_is_a_sha256_leak_both_ways():
    table = add_leak_columns(_table([("a", "0", "train", "s1", "0f" * 8), ("b", "0", "test", "s1", "0f" * 8),
                                     ("c", "1", "train", "s2", "f0" * 8)]), phash_max_distance=0)
    assert table["leak_sha256_with"].tolist()[:2] == ["0/b.png", "0/a.png"]
    assert pd.isna(table.loc[2, "leak_sha256_with"])
    assert table["leak_phash_with"].tolist()[:2] == ["0/b.png", "0/a.png"]
    assert table["label_conflict_with"].isna().all()


def test_phash_leak_respects_the_distance_and_ignores_same_split():
    near = f"{int('0f' * 8, 16) ^ 0b11:016x}"  # two bits away
    rows = [("a", "0", "train", "s1", "0f" * 8), ("b", "0", "val", "s2", near), ("c", "0", "train", "s3", near)]
    one = add_leak_columns(_table(rows), 1)["leak_phash_with"]
    assert pd.isna(one[0]) and one.tolist()[1:] == ["0/c.png", "0/b.png"]  # a~c share a split: not a leak
    two = add_leak_columns(_table(rows), 2)
    assert two["leak_phash_with"].tolist() == ["0/b.png", "0/c.png", "0/b.png"]  # nearest of another split
    assert two["leak_phash_distance"].tolist() == [2, 0, 0]


def test_same_bytes_under_two_labels_is_a_conflict():
    rows = [("a", "cat", "train", "s1", "0f" * 8), ("b", "dog", "train", "s1", "0f" * 8),
            ("c", "cat", "train", "s2", "f0" * 8)]
    table = add_leak_columns(_table(rows), 0)
    assert table["label_conflict_with"].tolist()[:2] == ["dog/b.png", "cat/a.png"]
    assert table["leak_sha256_with"].isna().all()  # same split: a duplicate, not a leak


def test_quarantined_rows_are_neither_flagged_nor_partners():
    rows = [("a", "0", "train", "s1", "0f" * 8), ("b", "0", "test", "s1", "0f" * 8)]
    table = add_leak_columns(_table(rows, quarantined={"b"}), 0)
    assert table[["leak_sha256_with", "leak_phash_with", "label_conflict_with"]].isna().all().all()


def test_class_table_counts_kept_images_and_lists_empty_classes():
    rows = [(f"t{i}", "0", "train", f"s{i}", "0f" * 8) for i in range(6)]
    rows += [("v", "0", "val", "sv", "0f" * 8), ("one", "1", "train", "so", "0f" * 8),
             ("x", "9", "test", "sx", "0f" * 8), ("q", "1", "train", "sq", "0f" * 8)]
    profile = _table(rows, quarantined={"q"})
    table = class_table(profile, ["0", "1", "2"])
    assert table["label"].tolist() == ["0", "1", "2", "9"] and table["expected"].tolist() == [True, True, True, False]
    assert table["n_train"].tolist() == [6, 1, 0, 0] and table["n_total"].tolist() == [7, 1, 0, 1]
    assert table["ratio_to_largest"].tolist() == pytest.approx([1, 1 / 7, 0, 1 / 7])
    marked = add_class_columns(profile, table)
    assert marked["class_n_train"].notna().sum() == 3  # one row per observed class (not the quarantined one)
    assert marked.loc[marked["id"] == "one", "class_n_train"].item() == 1
