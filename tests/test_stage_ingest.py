"""`tlops ingest` end to end through the CLI: digits, folders with bad input, stable splits, budgets, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.common.io import sha256_file
from pipeline.data.shards import MANIFEST_COLUMNS, read_classes, read_manifest, read_splits, verify_dataset
from tests.support.badimages import good_png, huge_png, truncated_jpeg


def _ingest(out: Path, *overrides: str) -> int:
    argv = ["ingest", "--dataset", str(out / "dataset"), "--metrics", str(out / "metrics.json"),
            "--report-dir", str(out / "report")]
    for item in overrides:
        argv += ["--set", item]
    return main(argv)


def _images(root: Path, layout: dict[str, int], start: int = 0) -> Path:
    """``layout``: class -> count; images get distinct seeds from ``start`` on, nested every third."""
    seed = start
    for label, count in layout.items():
        for i in range(count):
            path = root / label / ("deep/er" if i % 3 == 0 else "") / f"img{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(good_png(seed, 8))
            seed += 1
    return root


def test_digits_default_ingest(tmp_path, capsys):
    assert _ingest(tmp_path, "source.digits_size=16") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 1797 and summary["classes"] == 10 and summary["skipped"] == 0
    manifest = read_manifest(tmp_path / "dataset")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert (manifest[["width", "height"]] == 16).all().all() and set(manifest["mode"]) == {"RGB"}
    assert read_classes(tmp_path / "dataset") == [str(d) for d in range(10)]
    splits = read_splits(tmp_path / "dataset")
    assert splits["sizes"] == summary["splits"] and sum(splits["sizes"].values()) == 1797
    assert 200 < splits["sizes"]["test"] < 340 and all(c["test"] > 0 for c in splits["class_counts"].values())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["class_counts"]["3"] == splits["class_counts"]["3"]
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"ingest_report.json", "class_counts.png",
                                                                 "samples.png"}
    assert verify_dataset(tmp_path / "dataset") == 1797
    shards = {p.name: sha256_file(p) for p in (tmp_path / "dataset" / "shards").iterdir()}
    assert _ingest(tmp_path / "again", "source.digits_size=16") == 0  # byte-identical on a second run
    assert shards == {p.name: sha256_file(p) for p in (tmp_path / "again" / "dataset" / "shards").iterdir()}


def test_folder_with_bad_files_lists_every_skip(tmp_path, capsys):
    root = _images(tmp_path / "imgs", {"cats": 6, "dogs": 5})
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / "zcopy.png").write_bytes((root / "dogs" / "img7.png").read_bytes())
    (root / "readme.md").write_text("top-level file")
    assert _ingest(tmp_path, f"source.location={root}", "ingest.budget_per_class=2") == 0
    report = json.loads((tmp_path / "report" / "ingest_report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["readme.md"] == "not inside a class folder"
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons["zcopy.png"] == f"duplicate of {root / 'dogs' / 'img7.png'}"
    assert report["skipped_by_reason"] == {"not inside a class folder": 1, "not an image": 1, "duplicate": 1}
    manifest = read_manifest(tmp_path / "dataset")
    assert len(manifest) == 11 and set(manifest["label"]) == {"cats", "dogs"}
    train = manifest[manifest["split"] == "train"]
    assert ((train.groupby("label")["in_budget"].sum() <= 2).all()
            and manifest[manifest["split"] != "train"]["in_budget"].all())


def test_adding_images_moves_no_old_image(tmp_path):
    root = _images(tmp_path / "imgs", {"a": 30, "b": 30})
    assert _ingest(tmp_path / "v1", f"source.location={root}") == 0
    _images(root, {"a": 40, "b": 40, "c": 20}, start=1000)
    assert _ingest(tmp_path / "v2", f"source.location={root}") == 0
    old = read_manifest(tmp_path / "v1" / "dataset").set_index("id")["split"]
    new = read_manifest(tmp_path / "v2" / "dataset").set_index("id")["split"]
    assert len(new) == 160 and new.loc[old.index].equals(old)


@pytest.mark.parametrize("damage, message", [
    ("duplicate", r"imgs/dogs/twin.png \(label 'dogs'\) is the same image as .*imgs/cats/img0.png"),
    ("single", r"class 'lonely' has only 1 image\(s\): .*imgs/lonely/img100.png"),
    ("no_images", r"class 'texts' has no usable images; e.g. .*imgs/texts/a.txt: not an image"),
    ("empty_class", r"imgs/hollow: class folder 'hollow' has no files"),
])
def test_bad_input_is_an_error_naming_the_path_and_keeps_the_old_dataset(tmp_path, capsys, damage, message):
    root = _images(tmp_path / "imgs", {"cats": 4, "dogs": 4})
    assert _ingest(tmp_path, f"source.location={root}") == 0
    before = read_manifest(tmp_path / "dataset")
    if damage == "duplicate":
        (root / "dogs" / "twin.png").write_bytes((root / "cats" / "deep" / "er" / "img0.png").read_bytes())
    elif damage == "single":
        _images(root, {"lonely": 1}, start=100)
    elif damage == "no_images":
        (root / "texts").mkdir()
        (root / "texts" / "a.txt").write_text("words")
    else:
        (root / "hollow").mkdir()
    capsys.readouterr()
    assert _ingest(tmp_path, f"source.location={root}") == 2
    err = capsys.readouterr().err.replace("/deep/er", "")
    err = err[err.index("tlops ingest: error:"):]  # after the stage's log lines: the one error, naming the cause
    assert pd.Series([err]).str.contains(message).all(), err
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "dataset"), before)


def test_empty_and_missing_sources(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _ingest(tmp_path, f"source.location={tmp_path / 'empty'}") == 2
    assert f"{tmp_path / 'empty'}: no class folders" in capsys.readouterr().err
    assert _ingest(tmp_path, f"source.location={tmp_path / 'nope'}") == 2
    assert f"{tmp_path / 'nope'}: source folder does not exist" in capsys.readouterr().err
    assert _ingest(tmp_path, "ingest.budget_per_class=3", "ingest.budget_fraction=0.5") == 2
    assert "at most one of budget_per_class and budget_fraction" in capsys.readouterr().err


def test_an_over_limit_image_and_truncated_jpegs_reach_the_gate_instead_of_crashing_ingest(tmp_path):
    root = _images(tmp_path / "imgs", {"cats": 6, "dogs": 6})
    (root / "dogs" / "bomb.png").write_bytes(huge_png())  # 400 MP: over PIL's decompression-bomb limit
    for i in range(6):  # several, so that some land in train, whose samples the report draws
        (root / "cats" / f"cut{i}.jpg").write_bytes(truncated_jpeg(i))
    assert _ingest(tmp_path, f"source.location={root}") == 0
    manifest = read_manifest(tmp_path / "dataset").set_index("source_path")
    assert manifest.loc[str(root / "dogs" / "bomb.png"), "width"] == 20000  # stored: validate judges it by name
    assert (manifest.index.str.contains("cut") & (manifest["split"] == "train")).any()
    assert (tmp_path / "report" / "samples.png").stat().st_size > 1000


_PEAK_RSS = """
import resource, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "exit", code)
"""


def _ingest_peak(out: Path, source: Path) -> tuple[int, str]:
    """Ingest ``source`` in a child process; returns its peak RSS (KiB) and its stderr."""
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, "ingest", "--dataset", str(out / "dataset"),
                           "--metrics", str(out / "metrics.json"), "--report-dir", str(out / "report"),
                           "--set", f"source.location={source}", "--set", "ingest.val_fraction=0.01",
                           "--set", "ingest.test_fraction=0.01"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    last = (done.stdout.strip().splitlines() or [""])[-1].split()
    assert last[:1] == ["peak_rss_kb"] and last[3:] == ["0"], done.stdout + done.stderr
    return int(last[1]), done.stderr


def test_an_image_over_the_pixel_limit_is_listed_and_never_decoded_at_ingest(tmp_path):
    # 9600x9600 is over validate.max_pixels (64 MP) but under PIL's own error limit (179 MP): the samples
    # figure used to decode it whole, 6.5 GB peak for an 11 KB file
    root = _images(tmp_path / "imgs", {"cats": 6, "dogs": 6})
    baseline, _ = _ingest_peak(tmp_path / "plain", root)
    bomb = root / "dogs" / "bomb.png"
    bomb.write_bytes(huge_png(9600))  # built row by row: the test never holds the decoded image either
    peak, stderr = _ingest_peak(tmp_path / "bomb", root)
    assert peak < 1.25 * baseline, f"peak RSS {peak} KiB with the bomb vs {baseline} KiB without"
    assert (f"{bomb}: 9600x9600 = 92,160,000 pixels, over validate.max_pixels = 64,000,000: stored undecoded, for "
            "the validation gate to refuse") in stderr
    report = json.loads((tmp_path / "bomb" / "report" / "ingest_report.json").read_text())
    assert report["over_pixel_limit"] == [{"path": str(bomb), "pixels": 92_160_000,
                                           "reason": "9600x9600 pixels, over validate.max_pixels = 64,000,000"}]
    manifest = read_manifest(tmp_path / "bomb" / "dataset").set_index("source_path")
    assert manifest.loc[str(bomb), "split"] == "train"  # so the samples figure would have drawn it


def test_files_named_as_images_that_are_none_reach_the_gate_which_fails_naming_them(tmp_path, capsys):
    root = _images(tmp_path / "imgs", {"cats": 6, "dogs": 6})
    (root / "cats" / "empty.png").write_bytes(b"")  # a download that never arrived, in two classes:
    (root / "dogs" / "empty.png").write_bytes(b"")  # two failures, not one image under two labels
    (root / "cats" / "export.jpg").write_text("<html>Access denied</html>")  # an error page saved as an image
    (root / "dogs" / "notes.txt").write_text("taken at the shelter")  # not named as an image: skipped
    assert _ingest(tmp_path, f"source.location={root}") == 0
    manifest = read_manifest(tmp_path / "dataset").set_index("source_path")
    for name in ("cats/empty.png", "dogs/empty.png", "cats/export.jpg"):
        assert manifest.loc[str(root / name), "width"] == 0, name
    assert str(root / "dogs" / "notes.txt") not in manifest.index
    capsys.readouterr()
    assert main(["validate", "--dataset", str(tmp_path / "dataset"), "--image-profile", str(tmp_path / "p.parquet"),
                 "--metrics", str(tmp_path / "validate.json"), "--report-dir", str(tmp_path / "validate")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "validation gate failed" in error and "decodes (" in error
    offending = "\n".join(json.loads((tmp_path / "validate.json").read_text())["checks"]["decodes"]["offending"])
    for name in ("cats/empty.png", "dogs/empty.png", "cats/export.jpg"):
        assert name in offending, name


def test_refused_files_fail_the_ingest_naming_them_and_keep_the_old_dataset(tmp_path, capsys):
    root = _images(tmp_path / "imgs", {"cats": 6, "dogs": 6})
    assert _ingest(tmp_path, f"source.location={root}") == 0
    before = read_manifest(tmp_path / "dataset")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.png").write_bytes(good_png(99, 8))
    (root / "cats" / "key.png").symlink_to(tmp_path / "private" / "key.png")
    capsys.readouterr()
    assert _ingest(tmp_path, f"source.location={root}") == 2
    err = capsys.readouterr().err.strip()
    assert f"1 file(s) refused\n  e.g. {root / 'cats' / 'key.png'}: refused: outside the source's folder" in err
    assert read_manifest(tmp_path / "dataset").equals(before)
    assert _ingest(tmp_path, f"source.location={root}", f"source.allowed_roots=[{tmp_path / 'private'}]") == 0
