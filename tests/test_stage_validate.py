"""`tlops validate` end to end: bad data stops the gate with a message naming checks and files;
clean data (with convertible modes) passes; the quarantine policy excludes, lists and counts, and the
stages after it never decode a quarantined image."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.data.shards import ShardImageDataset, dataset_version, read_manifest
from pipeline.selection.result import architecture_record
from pipeline.stages.protocol import use_validated
from tests.support import badimages as bad
from tests.support.badimages import Item
from tests.support.training_data import TINY_MODEL, write_selection

CLASSES = ["cat", "dog", "owl", "empty"]
# the smallest chain after validate: the tiny test network at 32 px, one corruption, a few steps each
_CHAIN_PARAMS = """
validate: {workers: 1}
common: {image_size: 32, seed: 0}
shift: {corruptions: [contrast], severities: [1]}
freeze: {strategy: lp_ft, depth: 4, epochs: 1}
train: {batch_size: 8, eval_batch_size: 64, augment: none, min_epoch_steps: 1}
finetune: {patience: 0}
baseline: {patience: 1, max_epochs: 2}
curve: {budgets: [2], seeds: [0, 1, 2], val_per_class: 1}
evaluate: {attack_images: 4, interpret_classes: 1,
           ideal_steps: 1, adversarial_max_steps: 1, fgsm_epsilons: [0.0]}
"""


def _clean_items(seed0: int = 0) -> list[Item]:
    """Six train, two val, two test images for cat, dog and owl: distinct, ordinary RGB PNGs."""
    items, seed = [], seed0
    for label in CLASSES[:3]:
        for split, count in (("train", 6), ("val", 2), ("test", 2)):
            items += [Item(f"{label}{seed}", label, split, bad.good_png(seed)) for seed in range(seed, seed + count)]
            seed += count
    return items


def _validate(tmp_path: Path, items: list[Item], classes: list[str], *overrides: str) -> tuple[int, Path]:
    dataset = bad.write_dataset(tmp_path / "dataset", items, classes)
    (tmp_path / "params.yaml").write_text("validate:\n  workers: 1\n")
    argv = ["validate", "--params", str(tmp_path / "params.yaml"), "--dataset", str(dataset),
            "--image-profile", str(tmp_path / "profile.parquet"), "--metrics", str(tmp_path / "metrics.json"),
            "--report-dir", str(tmp_path / "reports")]
    for item in overrides:
        argv += ["--set", item]
    return main(argv), tmp_path


@pytest.fixture(autouse=True)
def _in_project(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the CLI finds dvc.yaml from here


def test_bad_data_fails_the_gate_naming_checks_and_files(tmp_path, capsys):
    items = _clean_items() + [
        Item("zero", "cat", "train", bad.zero_byte()), Item("text", "cat", "train", bad.text_as_png()),
        Item("trunc", "dog", "train", bad.truncated_jpeg()), Item("huge", "dog", "val", bad.huge_png()),
        Item("leak", "owl", "test", bad.good_png(0)),  # the bytes of cat0 (train) in test
        Item("twin", "dog", "train", bad.good_png(3)),  # cat3's bytes, also in train, under another label
        Item("solo", "bird", "train", bad.good_png(99)),  # a class nobody expects, with a single image
    ]
    code, out = _validate(tmp_path, items, CLASSES + ["bird"])
    assert code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    for text in ("validation gate failed", "decodes (cat/zero.img (empty file (0 bytes))",
                 "labels_match_classes (class 'empty': no images", "no_leak_sha256 (", "cat/cat0.img ~ owl/leak.img",
                 "no_label_conflict (", "cat/cat3.img ~ dog/twin.img", "no_duplicates_in_split",
                 "min_images_per_class (class 'bird'", str(out / "metrics.json")):
        assert text in error, text
    metrics = json.loads((out / "metrics.json").read_text())
    checks = metrics["checks"]
    assert not metrics["passed"] and metrics["quarantined"] == 0
    assert any("dog/huge.img (decompression-bomb guard" in f for f in checks["decodes"]["offending"])
    assert any("dog/trunc.img (does not decode: OSError: image file is truncated" in f
               for f in checks["decodes"]["offending"])
    assert checks["class_imbalance"]["offending"] == ["class 'bird'"]
    assert checks["no_leak_phash"]["severity"] == "warning" and not checks["no_leak_phash"]["passed"]
    assert checks["row_count"]["passed"] and checks["row_count"]["observed"] == len(items)
    assert (out / "reports" / "data_docs" / "index.html").is_file() and (out / "reports" / "profile.png").is_file()
    profile = pd.read_parquet(out / "profile.parquet")
    assert len(profile) == len(items) and (~profile["decode_ok"]).sum() == 4


def test_convertible_modes_pass_with_the_conversion_recorded(tmp_path, capsys):
    converted = {"cmyk": bad.cmyk_jpeg(200), "p16": bad.png_16bit_gray(201), "rgb16": bad.png_16bit_rgb(202),
                 "pal": bad.palette_png(203), "rgba": bad.rgba_png(204), "gray": bad.grayscale_png(205),
                 "exif": bad.exif_rotated_jpeg(206)}
    items = _clean_items() + [Item(name, "owl", "train", data) for name, data in converted.items()]
    code, out = _validate(tmp_path, items, CLASSES[:3])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["passed"] and summary["failed_warning"] == ["needs_no_conversion"]
    assert "warn needs_no_conversion" in captured.err and "gate PASSED" in captured.err
    profile = pd.read_parquet(out / "profile.parquet").set_index("id")
    assert profile.loc["cmyk", "conversion"] == "CMYK -> RGB" and profile.loc["exif", "exif_orientation"] == 6
    assert profile.loc[list(converted), "conversion"].notna().all() and profile.loc["cat0", "conversion"] is None


@pytest.mark.parametrize("max_fraction, passes", [(0.1, True), (0.01, False)])
def test_quarantine_excludes_lists_and_counts(tmp_path, capsys, max_fraction, passes):
    items = _clean_items() + [Item("zero", "cat", "train", bad.zero_byte()),
                              Item("trunc", "dog", "val", bad.truncated_jpeg())]
    code, out = _validate(tmp_path, items, CLASSES[:3], "validate.corrupt_policy=quarantine",
                          f"validate.max_quarantine_fraction={max_fraction}")
    assert code == (0 if passes else 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quarantined"] == 2 and metrics["images"] == len(items)
    assert [entry["id"] for entry in metrics["quarantine"]] == ["zero", "trunc"]
    assert metrics["classes"]["cat"]["train"] == 6  # quarantined images are not counted
    profile = pd.read_parquet(out / "profile.parquet")
    assert profile["quarantined"].sum() == 2
    if not passes:
        assert "decodes (cat/zero.img (empty file (0 bytes))" in capsys.readouterr().err


def test_a_single_class_fails_the_gate_on_min_classes(tmp_path, capsys):
    # every per-class check passes on one class; select used to be the first to fail on it, much later
    items = [item for item in _clean_items() if item.label == "cat"]
    code, out = _validate(tmp_path, items, ["cat"], "validate.min_rows=5", "validate.min_images_per_split=2")
    assert code == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failed_critical"] == ["min_classes"]
    check = metrics["checks"]["min_classes"]
    assert check["observed"] == 1 and check["threshold"] == "2 <= distinct values of class_label"
    assert "min_classes (1)" in capsys.readouterr().err.strip().splitlines()[-1]
    code, _ = _validate(tmp_path / "two", _clean_items()[:20], ["cat", "dog"], "validate.min_rows=5",
                        "validate.min_images_per_split=2")
    assert code == 0


def test_an_evaluation_split_too_small_fails_the_gate_naming_the_ingest_fraction(tmp_path, capsys):
    # the splits are a hash of each image: 42 images at test_fraction 0.15 once left one test image, and the
    # run failed at export, ten stages later
    items = [item for item in _clean_items() if item.split == "train"] + [
        next(item for item in _clean_items() if item.split == "test")]
    code, out = _validate(tmp_path, items, CLASSES[:3], "validate.min_rows=5")
    assert code == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failed_critical"] == ["min_images_per_split"]
    check = metrics["checks"]["min_images_per_split"]
    assert check["offending"] == ["split 'val': no images (ingest.val_fraction)",
                                  "split 'test': 1 image(s) (ingest.test_fraction)"]
    assert check["threshold"] == "split_label has each of {val, test}; 5 <= split_n_images"
    assert "min_images_per_split (split 'val': no images" in capsys.readouterr().err.strip().splitlines()[-1]
    code, _ = _validate(tmp_path / "lower", items, CLASSES[:3], "validate.min_rows=5",
                        "validate.min_images_per_split=1", "validate.severity.min_images_per_split=warning")
    assert code == 0  # a warning is reported, the gate passes


def test_every_check_has_expectations_with_its_configured_severity():
    from pipeline.config import ValidateParams
    from pipeline.validation.suite import CHECK_NAMES, build_expectations

    cfg = ValidateParams(severity={"no_leak_phash": "critical", "decodes": "warning"})
    built = build_expectations(cfg, ["a"])
    assert tuple(built) == CHECK_NAMES and all(built.values())
    severities = {name: {str(e.severity) for e in expectations} for name, expectations in built.items()}
    assert severities["no_leak_phash"] == {"critical"} and severities["decodes"] == {"warning"}
    assert all(e.meta == {"check": name} for name, expectations in built.items() for e in expectations)


def _shift(out: Path, validation: Path) -> int:
    """`tlops shift` (it decodes every test image) reading the gate's outcome, on one cheap corruption."""
    return main(["shift", "--params", str(out / "params.yaml"), "--dataset", str(out / "dataset"),
                 "--current", str(out / "current"), "--metrics", str(out / "shift.json"),
                 "--report-dir", str(out / "shift"), "--validation", str(validation),
                 "--set", "shift.corruptions=[contrast]", "--set", "shift.severities=[1]"])


def test_later_stages_leave_quarantined_images_out(tmp_path, capsys):
    items = _clean_items() + [Item("trunc", "dog", "test", bad.truncated_jpeg()),
                              Item("zero", "cat", "train", bad.zero_byte())]
    code, out = _validate(tmp_path, items, CLASSES[:3], "validate.corrupt_policy=quarantine",
                          "validate.max_quarantine_fraction=0.1")
    assert code == 0, capsys.readouterr().err
    assert _shift(out, out / "metrics.json") == 0, capsys.readouterr().err
    current = pd.read_parquet(out / "current" / "manifest.parquet")
    assert len(current) == 2 * 6 and "trunc" not in set(current["origin_id"])  # 6 good test images, clean + 1
    gated = use_validated(out / "dataset", out / "metrics.json")  # what every stage reads through
    assert gated.quarantined == {"trunc", "zero"} and len(ShardImageDataset(gated, "train")) == 18
    assert len(ShardImageDataset(out / "dataset", "train")) == 19  # a plain path: the dataset as ingested
    assert use_validated(out / "dataset", None).quarantined == frozenset()  # no gate given: nothing left out


@pytest.mark.slow
def test_training_and_evaluation_never_decode_a_quarantined_image(tmp_path, capsys):
    """freeze, finetune, baseline and evaluate (each its own gate read, as each stage process does) on data
    whose train, val and test splits each hold an image that does not decode: a read of any of them would
    fail the stage."""
    items = _clean_items() + [Item("zero", "cat", "train", bad.zero_byte()),
                              Item("trunc_val", "owl", "val", bad.truncated_jpeg(1)),
                              Item("trunc", "dog", "test", bad.truncated_jpeg(2))]
    code, out = _validate(tmp_path, items, CLASSES[:3], "validate.corrupt_policy=quarantine",
                          "validate.max_quarantine_fraction=0.1")
    assert code == 0, capsys.readouterr().err
    (out / "params.yaml").write_text(_CHAIN_PARAMS)
    assert _shift(out, out / "metrics.json") == 0, capsys.readouterr().err
    write_selection(out / "selection.json", TINY_MODEL)
    gate = ["--params", str(out / "params.yaml"), "--dataset", str(out / "dataset"),
            "--validation", str(out / "metrics.json")]
    assert main(["freeze", *gate, "--selection", str(out / "selection.json"), "--plan", str(out / "plan.json"),
                 "--metrics", str(out / "freeze.json")]) == 0, capsys.readouterr().err
    (out / "architecture.json").write_text(json.dumps(architecture_record(TINY_MODEL)))
    curve = ["--curve", str(out / "scratch_runs.json"), "--curve-metrics", str(out / "curve.json")]
    for stage, model in (("finetune", ["--plan", str(out / "plan.json")]),
                         ("baseline", ["--architecture", str(out / "architecture.json"), *curve])):
        assert main([stage, *gate, *model, "--model-dir", str(out / stage),
                     "--metrics", str(out / f"{stage}.json"), "--history", str(out / f"{stage}.csv"),
                     "--plot", str(out / f"{stage}.png"), "--checkpoints", str(out / "ckpt" / stage)]) == 0, \
            capsys.readouterr().err
    card = json.loads((out / "finetune" / "card.json").read_text())
    kept = read_manifest(use_validated(out / "dataset", out / "metrics.json"))
    assert card["data"]["train_images"] == 18  # 19 train images, one quarantined
    assert card["data"]["version"] == dataset_version(kept["sha256"].tolist())  # the rows used, not the folder
    assert main(["evaluate", *gate, "--current", str(out / "current"), "--plan", str(out / "plan.json"),
                 "--finetuned", str(out / "finetune"), "--finetune-history", str(out / "finetune.csv"),
                 "--baseline", str(out / "baseline"), "--baseline-history", str(out / "baseline.csv"),
                 "--scratch-curve", str(out / "scratch_runs.json"), "--metrics", str(out / "evaluate.json"),
                 "--plots", str(out / "plots"), "--report-dir", str(out / "report")]) == 0, capsys.readouterr().err
    assert json.loads((out / "evaluate.json").read_text())["test_accuracy"]


def test_later_stages_refuse_data_that_failed_the_gate(tmp_path, capsys):
    code, out = _validate(tmp_path, _clean_items() + [Item("trunc", "dog", "test", bad.truncated_jpeg())],
                          CLASSES[:3])
    assert code == 2
    capsys.readouterr()
    assert _shift(out, out / "metrics.json") == 2
    assert "the validation gate failed (decodes)" in capsys.readouterr().err
    assert not (out / "current").exists()


# Anything a browser would fetch from another host: src/href attributes, CSS url() and @import.
_EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)(?:https?:)?//""", re.I)
# In GX's pages a plain link to its online docs loads nothing; resources must not come from outside.
_EXTERNAL_RESOURCE = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//"""
                                r"""|url\(\s*["']?(?:https?:)?//|@import\s+["']?(?:https?:)?//""", re.I)


@pytest.mark.parametrize("extra, status, code", [
    ([], "passed", 0),
    ([Item("gray", "owl", "train", bad.grayscale_png(205))], "passed_with_warnings", 0),  # needs_no_conversion warns
    ([Item("trunc", "dog", "train", bad.truncated_jpeg())], "failed", 2),  # decodes is critical
])
def test_report_page_shows_the_gate_status_offline(tmp_path, capsys, extra, status, code):
    run_code, out = _validate(tmp_path, _clean_items() + extra, CLASSES[:3])
    assert run_code == code, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == status and metrics["passed"] == (status != "failed")
    assert metrics["report"] == str(out / "reports" / "report.html")
    page = (out / "reports" / "report.html").read_text()
    assert f"Status: {status.replace('_', ' ')}</b>" in page
    assert not _EXTERNAL.search(page), _EXTERNAL.search(page)
    assert 'src="data:image/png;base64,' in page and 'href="data_docs/index.html"' in page
    rows = {name: re.search(rf"<tr class=\"(\w+)\"><td><code>{name}</code>", page) for name in metrics["checks"]}
    assert all(rows.values()) and {row.group(1) for row in rows.values()} == {
        "passed": {"pass"}, "passed_with_warnings": {"pass", "warn"}, "failed": {"pass", "fail"}}[status]
    assert metrics["checks"]["row_count"]["threshold"] == "20 <= rows <= 10,000,000"
    docs = out / "reports" / "data_docs"
    validation_page = next((docs / "validations").rglob("*.html"))
    for html in (docs / "index.html", validation_page, docs / "expectations" / "image_gate.html"):
        text = html.read_text()
        assert not _EXTERNAL_RESOURCE.search(text), (html, _EXTERNAL_RESOURCE.search(text))
        assert f"Gate status: {status.replace('_', ' ')}" in text and "<script" not in text
    assert validation_page.relative_to(docs).as_posix() in (docs / "index.html").read_text()  # listed statically
    gx_status = re.search(r"Status:</span>\s*([^<(]+)", validation_page.read_text()).group(1).strip()
    assert gx_status == status.replace("_", " ")
