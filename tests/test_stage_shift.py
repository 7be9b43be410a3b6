"""`tlops shift`: the corrupted 'current' set (grid and random, capped per cell), reproducible; a new batch as
current, in its own group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.common.io import sha256_file
from pipeline.data.shards import SHIFT_COLUMNS, read_classes, read_manifest, verify_dataset
from tests.support.badimages import good_png
from tests.support.gate import passed_gate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small ingested folder dataset (3 classes x 12 images of 12 px)."""
    root = tmp_path_factory.mktemp("src")
    for i in range(36):
        (root / "imgs" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / "imgs" / f"c{i % 3}" / f"{i}.png").write_bytes(good_png(i, 12))
    assert main(["ingest", "--dataset", str(root / "dataset"), "--metrics", str(root / "m.json"), "--report-dir",
                 str(root / "rep"), "--set", f"source.location={root / 'imgs'}"]) == 0
    return root / "dataset"


def _shift(dataset: Path, out: Path, *overrides: str) -> int:
    argv = ["shift", "--dataset", str(dataset), "--current", str(out / "current"), "--metrics",
            str(out / "metrics.json"), "--report-dir", str(out / "report"), "--validation", str(passed_gate(out))]
    for item in overrides:
        argv += ["--set", item]
    return main(argv)


def test_grid_corrupts_every_test_image_at_every_level_reproducibly(dataset, tmp_path):
    settings = ("shift.corruptions=[jpeg, rotation, gaussian_noise]", "shift.severities=[1, 5]")
    assert _shift(dataset, tmp_path / "a", *settings) == 0
    source, current = read_manifest(dataset), read_manifest(tmp_path / "a" / "current")
    test_ids = set(source.loc[source["split"] == "test", "id"])
    assert set(SHIFT_COLUMNS) <= set(current.columns) and set(current["origin_id"]) == test_ids
    assert len(current) == len(test_ids) * (1 + 3 * 2) and set(current["split"]) == {"test"}
    pairs = set(zip(current["corruption"], current["severity"]))
    assert pairs == {("none", 0)} | {(c, s) for c in ("jpeg", "rotation", "gaussian_noise") for s in (1, 5)}
    clean = current[current["corruption"] == "none"].set_index("origin_id")["sha256"]
    assert clean.to_dict() == source.set_index("id").loc[list(test_ids), "sha256"].to_dict()
    assert read_classes(tmp_path / "a" / "current") == read_classes(dataset)
    assert verify_dataset(tmp_path / "a" / "current") == len(current)
    assert (tmp_path / "a" / "report" / "corruptions.png").stat().st_size > 1000
    assert _shift(dataset, tmp_path / "b", *settings) == 0
    for shard in (tmp_path / "a" / "current" / "shards").iterdir():
        assert sha256_file(shard) == sha256_file(tmp_path / "b" / "current" / "shards" / shard.name)


def test_random_assignment_gives_one_seeded_pair_per_image(dataset, tmp_path):
    assert _shift(dataset, tmp_path, "shift.assignment=random", "shift.include_clean=false") == 0
    current = read_manifest(tmp_path / "current")
    assert current["origin_id"].is_unique and (current["severity"] >= 1).all()
    assert current["corruption"].nunique() > 1


def test_new_batch_becomes_the_current_set(dataset, tmp_path, capsys):
    for i in range(4):
        (tmp_path / "batch" / "c1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "batch" / "c1" / f"{i}.png").write_bytes(good_png(500 + i, 12))
    assert _shift(dataset, tmp_path, f"shift.source={tmp_path / 'batch'}") == 0
    current = read_manifest(tmp_path / "current")
    # its own group, never the clean control's ("none", 0)
    assert len(current) == 4 and set(current["label_idx"]) == {1} and set(current["corruption"]) == {"batch:batch"}
    (tmp_path / "batch" / "zebra").mkdir()
    (tmp_path / "batch" / "zebra" / "z.png").write_bytes(good_png(900, 12))
    capsys.readouterr()
    assert _shift(dataset, tmp_path, f"shift.source={tmp_path / 'batch'}") == 2
    assert "label 'zebra' (e.g. " in capsys.readouterr().err


def test_a_zero_byte_jpg_in_a_batch_is_one_refused_row_and_the_batch_goes_on(dataset, tmp_path):
    for i in range(4):
        (tmp_path / "batch" / "c1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "batch" / "c1" / f"{i}.png").write_bytes(good_png(600 + i, 12))
    empty = tmp_path / "batch" / "c1" / "empty.jpg"
    empty.write_bytes(b"")  # used to end `tlops shift` with an internal error (its figure decoded it)
    assert _shift(dataset, tmp_path, f"shift.source={tmp_path / 'batch'}") == 0
    current = read_manifest(tmp_path / "current")
    assert len(current) == 4 and str(empty) not in set(current["source_path"])
    report = json.loads((tmp_path / "report" / "shift_report.json").read_text())
    assert report["skipped"] == [{"path": str(empty), "reason": "refused by the gate's rules: decodes: empty file "
                                                                "(0 bytes)"}]
    assert json.loads((tmp_path / "metrics.json").read_text())["refused"] == 1
    assert (tmp_path / "report" / "corruptions.png").stat().st_size > 1000


def test_per_cell_keeps_the_same_seeded_images_in_every_cell(dataset, tmp_path):
    settings = ("shift.corruptions=[jpeg, gaussian_noise]", "shift.severities=[1, 5]", "shift.per_cell=3")
    assert _shift(dataset, tmp_path / "a", *settings) == 0
    current = read_manifest(tmp_path / "a" / "current")
    cells = current.groupby(["corruption", "severity"])["origin_id"].apply(frozenset)
    assert len(cells) == 1 + 2 * 2 and set(cells.map(len)) == {3}
    assert len(set(cells)) == 1  # one paired ladder: the same three images at every level
    assert _shift(dataset, tmp_path / "b", *settings, "common.seed=1") == 0
    other = read_manifest(tmp_path / "b" / "current")
    assert set(other["origin_id"]) != set(current["origin_id"])  # the choice is seeded
