"""`tlops card`: the model card states what the run's outputs say (data, metrics with intervals, verdict,
limitations drawn from the figures), as Markdown and a self-contained HTML page, and stops on a failed gate.

The dataset, the ingest and validate outputs and the model are real (a small digit folder, the timm test
network); the evaluation, drift and export figures are written here with the keys those stages write, so each limitation
can be switched on and off (the whole chain's card is checked in tests/test_flows_e2e.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.common.io import write_json
from pipeline.config import validate_params
from pipeline.data.shards import dataset_version, read_manifest, read_classes
from pipeline.evaluation.model_card import CARD_HTML, CARD_MD, SMALL_CLASS, load_lines
from pipeline.models import LoadedModel
from pipeline.stages import ingest, validate
from tests.support.tiny import write_digit_folder

MODEL = "timm:test_efficientnet.random_init"
SIZE = 32


@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory) -> dict[str, Path]:
    """A real dataset, its ingest and validate metrics and a saved model."""
    work = tmp_path_factory.mktemp("card")
    source = write_digit_folder(work / "digits", size=SIZE)
    params = validate_params({"common": {"image_size": SIZE},
                              "source": {"location": str(source)},
                              "ingest": {"val_fraction": 0.25, "test_fraction": 0.25}})
    paths = {"dataset": work / "dataset", "ingest": work / "ingest.json", "validation": work / "validate.json",
             "model": work / "model", "source": source}
    ingest.run(params, ingest.Args(dataset=paths["dataset"], metrics=paths["ingest"], report_dir=work / "ri"))
    validate.run(params, validate.Args(dataset=paths["dataset"], image_profile=work / "profile.parquet",
                                       metrics=paths["validation"], report_dir=work / "rv"))
    classes = read_classes(paths["dataset"])
    LoadedModel.pretrained(MODEL, len(classes), SIZE, classes=classes).save(paths["model"], {})
    return paths


def _figures(classes: list[str], *, candidate: str = "finetuned", small_support: bool = False,
             problem: str | None = None, shifted: float = 0.7, drift_warnings: tuple[str, ...] = (),
             unscored: str | None = None) -> dict:
    """evaluate's metrics, drift.json and export's metrics with the keys those stages write; ``unscored``: the shift
    set had no labels (why), as evaluate writes it then."""
    support = 3 if small_support else SMALL_CLASS
    per_class = {c: {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": support} for c in classes}
    model = {"accuracy": 0.9, "macro_f1": 0.88, "ece": 0.04, "per_class": per_class}
    interval = {"low": 0.82, "high": 0.95}
    other = "scratch" if candidate == "finetuned" else "finetuned"
    evaluation = {
        "verdict": "positive", "verdict_reason": "transfer beats converged scratch at every budget",
        "recommended_model": candidate, "recommended_reason": "the better model on the test split",
        "test_accuracy": {candidate: 0.9, other: 0.8}, "shift_accuracy": {candidate: shifted, other: 0.6},
        "models": {"test": {"finetuned": model, "scratch": model}},
        "full_labels": {"n": 30, "finetuned_accuracy": 0.9, "scratch_accuracy": 0.8, "test": "exact McNemar",
                        "p_value": 0.031, "finetuned_interval": interval, "scratch_interval": interval,
                        "baseline_problem": problem},
        "shift": {"finetuned_interval": interval, "scratch_interval": interval}, "shift_unscored": None,
        "robustness": {name: {"none": {"0": 0.9}, "gaussian_noise": {"3": min(0.5, shifted), "5": shifted}}
                       for name in (candidate, other)},
    }
    if unscored:
        evaluation.update(shift=None, shift_unscored=unscored, shift_accuracy={candidate: None, other: None},
                          robustness={candidate: {}, other: {}})
    drift = {"reference": "the validation split", "n_reference": 40, "n_current": 60, "drift_detected": True,
             "p_value": 0.002, "rule": "permutation test on the embeddings, alpha 0.05",
             "descriptors_moved": ["brightness down"], "warnings": list(drift_warnings)}
    export = {"candidate": candidate,
              "onnx": {"max_abs_logit_diff": 3e-5, "images": 30, "top1_agreement": 1.0},
              "torchscript": {"max_abs_logit_diff": 0.0, "images": 30, "top1_agreement": 1.0}}
    return {"evaluation": evaluation, "drift": drift, "export": export}


def _card(outputs: dict[str, Path], out: Path, figures: dict, validation: Path | None = None) -> int:
    for name, content in figures.items():
        write_json(out / f"{name}.json", content)
    return main(["card", "--dataset", str(outputs["dataset"]), "--ingest", str(outputs["ingest"]),
                 "--validation", str(validation or outputs["validation"]),
                 "--evaluation", str(out / "evaluation.json"), "--drift", str(out / "drift.json"),
                 "--export", str(out / "export.json"), "--model", str(outputs["model"]),
                 "--report-dir", str(out / "card"), "--set", f"source.location={outputs['source']}",
                 "--set", f"common.image_size={SIZE}"])


def test_the_card_names_the_data_figures_and_verdict_of_the_run(run_outputs, tmp_path):
    classes = read_classes(run_outputs["dataset"])
    assert _card(run_outputs, tmp_path, _figures(classes)) == 0
    card = (tmp_path / "card" / CARD_MD).read_text()
    ingested = json.loads(run_outputs["ingest"].read_text())
    version = dataset_version(read_manifest(run_outputs["dataset"])["sha256"].tolist())
    assert card.startswith(f"# Model card: {MODEL}\n") and "(trained from scratch)" not in card
    assert f"dataset sha256 `{version}` from `{run_outputs['source']}`" in card
    assert f"{ingested['images']} images ({ingested['splits']['train']} train" in card
    for name in classes:  # one row a class, with its ingest counts
        counts = ingested["class_counts"][name]
        assert f"| {name} | {counts['train']} | {counts['val']} | {counts['test']} |" in card
    assert "| test accuracy | 0.9000 [0.8200, 0.9500] |" in card
    gate = json.loads(run_outputs["validation"].read_text())
    assert f"- Validation gate: **{gate['status'].replace('_', ' ')}**" in card
    assert "## Transfer verdict: positive" in card and "p = 0.0310" in card
    assert "**drift detected** (p = 0.0020" in card and "Moved: brightness down." in card
    assert "- onnx: largest logit difference from PyTorch 3.0e-05 on 30 test images" in card
    assert "Under corruption accuracy falls from 0.900 to 0.700; worst: gaussian_noise at severity 3, 0.500." in card
    assert "their per-class figures are anecdotes" not in card and "is not a result" not in card
    # a plain timm network loads with timm + torch, without tlops
    assert "\n".join(load_lines({"classes": classes, "arch": "test_efficientnet"}, "timm")) in card
    html = (tmp_path / "card" / CARD_HTML).read_text()
    assert "<table>" in html and "Transfer verdict: positive" in html and "http" not in html.split("<body")[0]


def test_the_limitations_follow_the_figures(run_outputs, tmp_path):
    classes = read_classes(run_outputs["dataset"])
    figures = _figures(classes, candidate="scratch", small_support=True, problem="scratch predicts one class",
                       shifted=0.95, drift_warnings=("only 12 current images",))
    assert _card(run_outputs, tmp_path, figures) == 0
    card = (tmp_path / "card" / CARD_MD).read_text()
    assert "(trained from scratch)" in card and "This card describes the **scratch** model" in card
    assert f"Classes with fewer than {SMALL_CLASS} test images ({', '.join(sorted(classes))})" in card
    assert "The from-scratch comparison is not a result: scratch predicts one class." in card
    assert "Drift check at training time: only 12 current images." in card
    assert "Under corruption" not in card  # the shift set scored higher: nothing to warn about
    assert f"Inputs are resized to {SIZE}x{SIZE} px" in card


def test_an_unlabelled_shift_set_is_said_not_measured(run_outputs, tmp_path):
    reason = "60 of its 60 image(s) have no label (e.g. a.png): shift.source is an unlabelled batch"
    assert _card(run_outputs, tmp_path, _figures(read_classes(run_outputs["dataset"]), unscored=reason)) == 0
    card = (tmp_path / "card" / CARD_MD).read_text()
    assert "| domain-shift set accuracy | not measured (unlabelled set) |" in card
    assert f"## Robustness per corruption\nNot measured: the domain-shift set {reason}." in card
    assert f"Robustness to corruption was not measured: the domain-shift set {reason}." in card
    assert "| corruption | severity | accuracy |" not in card and "Under corruption" not in card


def test_a_failed_gate_writes_no_card(run_outputs, tmp_path, capsys):
    failed = write_json(tmp_path / "gate.json", {"passed": False, "failed_critical": ["leakage"], "quarantine": []})
    assert _card(run_outputs, tmp_path, _figures(read_classes(run_outputs["dataset"])), validation=failed) == 2
    assert "the validation gate failed (leakage)" in capsys.readouterr().err
    assert not (tmp_path / "card").exists()
