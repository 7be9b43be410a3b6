"""Deterministic train/val/test splits and label budgets cut on a hash of each image's content.

An image's split depends on its own sha256 (and the seed) only: a uniform number u in [0, 1) is
derived from it, u < test_fraction is test, the next val_fraction is val, the rest train. So adding
images never moves an old one, and duplicates land together. Each class is split by the same cut,
which makes the splits stratified in expectation (per-class counts are binomial around the target;
splits.json records the realised counts).
"""

from __future__ import annotations

import hashlib

import pandas as pd

__all__ = ["hash_unit", "assign_splits", "assign_budget", "split_summary", "SPLIT_NAMES"]
SPLIT_NAMES = ("train", "val", "test")
_DIGITS = 13  # 52 bits: exact in a float64


def hash_unit(sha256: str, salt: str) -> float:
    """Map an image's sha256 and a salt to a uniform number in [0, 1)."""
    digest = hashlib.sha256(f"{salt}:{sha256}".encode()).hexdigest()
    return int(digest[:_DIGITS], 16) / 16**_DIGITS


def assign_splits(sha256: pd.Series, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Return the split of each image.

    Args:
        sha256: content hashes, one per image.
        val_fraction: expected share of val.
        test_fraction: expected share of test.
        seed: salts the hash (another seed, another split).
    Returns:
        A Series of "train" | "val" | "test" aligned with ``sha256``.
    """
    u = sha256.map(lambda sha: hash_unit(sha, f"split:{seed}"))
    return pd.Series(pd.cut(u, [0, test_fraction, test_fraction + val_fraction, 1], right=False,
                            labels=["test", "val", "train"]).astype(str), index=sha256.index)


def assign_budget(manifest: pd.DataFrame, per_class: int | None, fraction: float | None, seed: int) -> pd.Series:
    """Mark the train images inside the label budget (val/test and no-budget rows are all True).

    Args:
        manifest: rows with sha256, label and split.
        per_class: k per class: the k train images of each class with the smallest budget hash.
        fraction: or a share of train: the images whose budget hash is below it (stable as data grows).
        seed: salts the hash.
    Returns:
        A boolean Series aligned with ``manifest``.
    """
    inside = pd.Series(True, index=manifest.index)
    if per_class is None and fraction is None:
        return inside
    train = manifest[manifest["split"] == "train"]
    u = train["sha256"].map(lambda sha: hash_unit(sha, f"budget:{seed}"))
    if fraction is not None:
        inside[train.index] = u < fraction
    else:
        rank = u.groupby(train["label"]).rank(method="first")
        inside[train.index] = rank <= per_class
    return inside


def split_summary(manifest: pd.DataFrame, classes: list[str]) -> dict:
    """Split sizes, per-class counts per split, and in-budget train counts, for splits.json."""
    counts = pd.crosstab(manifest["label"], manifest["split"]).reindex(index=classes, columns=SPLIT_NAMES,
                                                                       fill_value=0)
    budget = manifest[(manifest["split"] == "train") & manifest["in_budget"]]["label"].value_counts()
    return {
        "sizes": {s: int(counts[s].sum()) for s in SPLIT_NAMES},
        "class_counts": {c: {s: int(counts.loc[c, s]) for s in SPLIT_NAMES} for c in classes},
        "train_in_budget": {c: int(budget.get(c, 0)) for c in classes},
        "total": int(len(manifest)),
    }
