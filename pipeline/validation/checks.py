"""Checks Great Expectations cannot express on one row: turned into columns and tables GX can check.

- leakage across splits by sha256 and by perceptual-hash Hamming distance -> ``leak_sha256_with``,
  ``leak_phash_with`` (the partner's source path; null when clean),
- the same bytes under two labels -> ``label_conflict_with``,
- per-class counts over the images kept -> a class table (one row per expected or observed class).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "EVALUATION_SPLITS", "add_leak_columns", "add_class_columns", "add_split_columns",
           "with_count_columns", "hamming_partners", "class_table", "kept"]
SPLITS = ("train", "val", "test")
EVALUATION_SPLITS = ("val", "test")  # what early stopping, the verdict and the export check are measured on
_PAIRS_PER_BLOCK = 2_000_000  # hash pairs compared per step (about 18 MB of temporaries)


def kept(profile: pd.DataFrame) -> pd.Series:
    """Mask of the rows that stay in the dataset (not quarantined)."""
    if "quarantined" not in profile:
        return pd.Series(True, index=profile.index)
    return ~profile["quarantined"].fillna(False).astype(bool)


def add_leak_columns(profile: pd.DataFrame, phash_max_distance: int) -> pd.DataFrame:
    """Add the partner columns for sha256 leakage, phash leakage and label conflicts.

    Args:
        profile: the profile table (id, source_path, label, split, sha256, phash, ...).
        phash_max_distance: largest Hamming distance (of 64 bits) at which two images count as the same.
    Returns:
        A copy with ``leak_sha256_with``, ``leak_phash_with``, ``leak_phash_distance`` and
        ``label_conflict_with``; quarantined rows are neither flagged nor used as partners.
    """
    out = profile.copy(deep=False)  # new columns only: the table itself is not duplicated
    mask = kept(out)
    out["leak_sha256_with"] = _exact_partner(out[mask], key="sha256", differ="split").reindex(out.index)
    out["label_conflict_with"] = _exact_partner(out[mask], key="sha256", differ="label").reindex(out.index)
    partner, distance = _phash_partner(out[mask & out["phash"].notna()], phash_max_distance)
    out["leak_phash_with"] = partner.reindex(out.index)
    out["leak_phash_distance"] = distance.reindex(out.index).astype("Int64")
    return out


def _exact_partner(rows: pd.DataFrame, key: str, differ: str) -> pd.Series:
    """For each row, the source path of a row with the same ``key`` but another ``differ`` value."""
    first = rows.groupby([key, differ], sort=False)["source_path"].first().reset_index()
    other = first.rename(columns={differ: "other_value", "source_path": "other_path"})
    pairs = rows[[key, differ]].reset_index(names="row").merge(other, on=key)
    pairs = pairs[pairs[differ] != pairs["other_value"]]
    return pairs.groupby("row")["other_path"].first().reindex(rows.index).astype("object")


def _phash_partner(rows: pd.DataFrame, max_distance: int) -> tuple[pd.Series, pd.Series]:
    """For each row, the nearest image of another split within ``max_distance`` bits, and its distance."""
    partner = pd.Series(pd.NA, index=rows.index, dtype="object")
    distance = pd.Series(pd.NA, index=rows.index, dtype="Int64")
    hashes = {split: _hash_ints(rows[rows["split"] == split]) for split in SPLITS}
    for query_split in SPLITS:
        query_rows = rows[rows["split"] == query_split]
        others = rows[(rows["split"] != query_split)]
        if query_rows.empty or others.empty:
            continue
        other_hashes = np.concatenate([hashes[s] for s in SPLITS if s != query_split])
        other_paths = pd.concat([rows.loc[rows["split"] == s, "source_path"] for s in SPLITS if s != query_split])
        nearest, dist = hamming_partners(hashes[query_split], other_hashes)
        hit = dist <= max_distance
        partner[query_rows.index[hit]] = other_paths.to_numpy()[nearest[hit]]
        distance[query_rows.index[hit]] = dist[hit]
    return partner, distance


def hamming_partners(queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour by Hamming distance between 64-bit hashes, in blocks.

    Args:
        queries: uint64 hashes to look up.
        pool: uint64 hashes to search.
    Returns:
        (index into ``pool`` of each query's nearest hash, its distance in bits).
    """
    nearest = np.zeros(len(queries), dtype=np.int64)
    distance = np.full(len(queries), 65, dtype=np.int64)
    step = max(1, _PAIRS_PER_BLOCK // max(len(pool), 1))  # memory stays flat however large the pool
    for start in range(0, len(queries), step):
        bits = np.bitwise_count(queries[start:start + step, None] ^ pool[None, :])
        nearest[start:start + step] = bits.argmin(axis=1)
        distance[start:start + step] = bits[np.arange(len(bits)), nearest[start:start + step]]
    return nearest, distance


def _hash_ints(rows: pd.DataFrame) -> np.ndarray:
    return np.array([int(h, 16) for h in rows["phash"]], dtype=np.uint64)


def class_table(profile: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Count the kept images per class and split.

    Args:
        profile: the profile table.
        classes: the expected class names; a class without images gets a row of zeros.
    Returns:
        One row per expected or observed label: ``label``, ``expected`` (bool), ``n_train``,
        ``n_val``, ``n_test``, ``n_total`` and ``ratio_to_largest`` (n_total / the largest n_total).
    """
    rows = profile[kept(profile)]
    counts = pd.crosstab(rows["label"], rows["split"]) if len(rows) else pd.DataFrame()
    labels = list(dict.fromkeys([*classes, *sorted(rows["label"].unique())]))
    counts = counts.reindex(index=labels, columns=list(SPLITS), fill_value=0)
    table = pd.DataFrame({"label": labels, "expected": [label in set(classes) for label in labels]})
    for split in SPLITS:
        table[f"n_{split}"] = counts[split].to_numpy(dtype=np.int64)
    table["n_total"] = table[[f"n_{s}" for s in SPLITS]].sum(axis=1)
    largest = table["n_total"].max() if len(table) else 0
    table["ratio_to_largest"] = table["n_total"] / largest if largest else 0.0
    return table


def add_class_columns(profile: pd.DataFrame, classes: pd.DataFrame) -> pd.DataFrame:
    """Add the class counts GX checks, on one row per class (its first kept image), null elsewhere.

    One row per class makes a class-level expectation count classes, not images, and list each
    offending class once.

    Args:
        profile: the profile table.
        classes: :func:`class_table` of it.
    Returns:
        A copy with ``class_label`` (its distinct values are the classes with kept images),
        ``class_n_train`` and ``class_ratio_to_largest``.
    """
    out = profile.copy(deep=False)  # new columns only: the table itself is not duplicated
    first = out[kept(out)].drop_duplicates("label")
    by_label = classes.set_index("label")
    out["class_label"] = first["label"].reindex(out.index)
    out["class_n_train"] = pd.Series(first["label"].map(by_label["n_train"]), dtype="Int64").reindex(out.index)
    out["class_ratio_to_largest"] = first["label"].map(by_label["ratio_to_largest"]).reindex(out.index)
    return out


def add_split_columns(profile: pd.DataFrame) -> pd.DataFrame:
    """Add the size of each evaluation split GX checks, on one row per split (its first kept image).

    The splits are cut on a hash of each image, not stratified: a small set can leave val or test with one
    image or none, and the stages after validate would measure on that.

    Args:
        profile: the profile table.
    Returns:
        A copy with ``split_label`` (its distinct values are the evaluation splits with kept images) and
        ``split_n_images`` (the kept images of that split).
    """
    out = profile.copy(deep=False)
    rows = out[kept(out) & out["split"].isin(EVALUATION_SPLITS)]
    first = rows.drop_duplicates("split")
    out["split_label"] = first["split"].reindex(out.index)
    out["split_n_images"] = pd.Series(first["split"].map(rows["split"].value_counts()),
                                      dtype="Int64").reindex(out.index)
    return out


def with_count_columns(profile: pd.DataFrame, classes: pd.DataFrame) -> pd.DataFrame:
    """The table the GX suite checks: the profile with the class columns and the split columns."""
    return add_split_columns(add_class_columns(profile, classes))
