"""The baseline, curve and evaluate stages end to end on the real digits (32 px, a label budget of 5 per class),
and the honesty checks: every interval is an accuracy, the curve stays inside the label budget, the
report's headline and its side-by-side numbers agree, random labels are never positive.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as tlops
from pipeline.config import Params, validate_params
from pipeline.data.shards import iter_records, read_classes, read_manifest, write_manifest
from pipeline.evaluation.comparison import embed_splits, label_efficiency
from pipeline.evaluation.references import majority_accuracy
from pipeline.evaluation.scratch_curve import scratch_side
from pipeline.evaluation.report import flatten, fmt
from pipeline.freezing.blocks import block_param_counts
from pipeline.freezing.plan import FreezePlan, build_phases
from pipeline.models import LoadedModel, get_spec
from pipeline.common.io import write_json
from pipeline.selection.result import architecture_record
from pipeline.stages import baseline, finetune, ingest, shift
from pipeline.training.recipes import Setup
from tests.support.gate import passed_gate

pytestmark = pytest.mark.slow  # trains real networks (tiny budgets, 32 px)
ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
SMALL = {
    "common": {"image_size": 32},
    "source": {"digits_size": 32},
    "ingest": {"budget_per_class": 5},
    "shift": {"corruptions": ["gaussian_noise"], "severities": [5], "per_cell": 8},
    "train": {"augment": "none", "batch_size": 32, "min_epoch_steps": 3},
    "baseline": {"patience": 2, "max_epochs": 12},
    "curve": {"budgets": [2, 10], "seeds": [0, 1, 2], "val_per_class": 3},
    "evaluate": {"attack_images": 16, "interpret_classes": 2, "ideal_steps": 5, "adversarial_max_steps": 10,
                 "fgsm_epsilons": [0.0, 0.03]},
}
OVERRIDES = [f"{section}.{key}={json.dumps(value)}" for section, values in SMALL.items() if section == "evaluate"
             for key, value in values.items()] + ["common.image_size=32"]


def _probe_plan(params: Params) -> FreezePlan:
    """A linear-probe freeze plan for the test backbone (what `tlops freeze` writes for few labels)."""
    spec = get_spec(MODEL)
    counts = block_param_counts(LoadedModel.scratch(MODEL, 10, 32).network, spec.blocks)
    phases = build_phases("linear_probe", len(spec.blocks) - 1, params.freeze, spec.blocks, counts)
    return FreezePlan(model=MODEL, strategy="linear_probe", requested="linear_probe", blocks=list(spec.blocks),
                      bn_policy="eval_all", phases=phases, block_params=counts, why=["test plan"],
                      probe_cs=params.freeze.probe_cs)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """ingest -> shift -> (plan) -> finetune -> baseline (and the curve) on the digits at 32 px, 5 labels per class."""
    work = tmp_path_factory.mktemp("chain")
    params = validate_params(SMALL)
    p = {name: work / name for name in ("dataset", "current", "finetuned", "baseline", "ck")}
    p["plan"] = _probe_plan(params).save(work / "plan.json")
    p["architecture"] = write_json(work / "architecture.json", architecture_record(MODEL))
    ingest.run(params, ingest.Args(dataset=p["dataset"], metrics=work / "i.json", report_dir=work / "ri"))
    shift.run(params, shift.Args(dataset=p["dataset"], current=p["current"], metrics=work / "s.json",
                                 report_dir=work / "rs"))
    finetune.run(params, finetune.Args(dataset=p["dataset"], plan=p["plan"], model_dir=p["finetuned"],
                                       metrics=work / "ft.json", history=work / "ft.csv", plot=work / "ft.png",
                                       checkpoints=p["ck"] / "ft"))
    p["baseline_metrics"], p["scratch_curve"] = work / "bl.json", work / "scratch_runs.json"
    baseline.run(params, baseline.Args(dataset=p["dataset"], architecture=p["architecture"], model_dir=p["baseline"],
                                       metrics=p["baseline_metrics"], history=work / "bl.csv", plot=work / "bl.png",
                                       checkpoints=p["ck"] / "bl", curve=p["scratch_curve"],
                                       curve_metrics=work / "curve.json"))
    p["work"] = work
    return p


def _evaluate(chain: dict[str, Path], current: Path, out: Path) -> dict:
    """`tlops evaluate` on the chain with ``current`` as the domain-shift set; its metrics."""
    argv = ["evaluate", "--dataset", chain["dataset"], "--current", current, "--plan", chain["plan"],
            "--finetuned", chain["finetuned"], "--finetune-history", chain["work"] / "ft.csv",
            "--baseline", chain["baseline"], "--baseline-history", chain["work"] / "bl.csv",
            "--scratch-curve", chain["scratch_curve"], "--metrics", out / "metrics.json", "--plots", out / "plots",
            "--report-dir", out / "report",
            "--validation", passed_gate(out)]
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)
        assert tlops([str(a) for a in argv] + [x for o in OVERRIDES for x in ("--set", o)]) == 0
    finally:
        os.chdir(cwd)
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def evaluated(chain) -> dict:
    out = chain["work"] / "eval"
    return {"metrics": _evaluate(chain, chain["current"], out), "out": out}


def _intervals(obj, path=""):
    """Every {mean, low, high} interval in a metrics tree, with where it is."""
    if isinstance(obj, dict):
        if {"low", "high"} <= set(obj):
            yield path, obj
        for key, value in obj.items():
            yield from _intervals(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _intervals(value, f"{path}.{i}")


@pytest.mark.timeout(1800)  # includes building the chain (module fixture)
def test_baseline_trains_from_scratch_to_convergence(chain):
    metrics = json.loads(chain["baseline_metrics"].read_text())
    card = json.loads((chain["baseline"] / "card.json").read_text())
    assert card["init"] == "random" and card["model"] == MODEL and card["weights"]["uri"] == "random-init"
    assert metrics["stopped_by"] in ("patience", "cap") and metrics["max_epochs"] == 12
    since_best = metrics["epochs_run"] - metrics["best_epoch"]
    assert metrics["converged"] == (metrics["stopped_by"] == "patience" or since_best >= 2)
    assert metrics["trainable_params"] == sum(card["freeze_plan"]["block_params"])  # nothing frozen
    assert metrics["optimizer_steps"] >= 3 * metrics["epochs_run"] and 0.0 <= metrics["test_accuracy"] <= 1.0


@pytest.mark.timeout(1800)
def test_evaluate_writes_the_verdict_its_comparisons_and_a_report_that_agrees(evaluated, capsys):
    metrics, out = evaluated["metrics"], evaluated["out"]
    assert metrics["verdict"] in ("positive", "no_gain", "negative", "inconclusive") and metrics["verdict_reason"]
    # the curve stays inside the run's label budget of 5 per class: 10/class is not drawn
    curve = metrics["label_efficiency"]
    assert [b["name"] for b in curve["budgets"]] == ["2/class"] and curve["skipped"][0].startswith("10/class")
    assert max(r["max_per_class"] for r in curve["runs"]) <= 5 and len(curve["runs"]) == 6
    for side in ("transfer", "scratch"):
        assert {"mean", "low", "high", "converged", "steps", "seconds"} <= set(curve["budgets"][0][side])
    full = metrics["full_labels"]
    assert {"finetuned_accuracy", "scratch_accuracy", "test", "p_value", "verdict"} <= set(full)
    assert full["n"] == metrics["models"]["test"]["finetuned"]["n"] and "McNemar" in full["test"]
    assert metrics["labels_saved"]["target_accuracy"] == full["scratch_accuracy"]
    intervals = list(_intervals(metrics))
    assert len(intervals) >= 8
    for where, iv in intervals:
        assert 0.0 <= iv["low"] <= iv["high"] <= 1.0 or where.endswith("difference"), (where, iv)
    assert metrics["recommended_model"] in ("finetuned", "scratch")
    for name in ("label_efficiency", "robustness", "learning_curves", "fgsm"):
        assert (out / "plots" / f"{name}.csv").stat().st_size > 0 and (out / "plots" / f"{name}.png").is_file()

    html = (out / "report" / "report.html").read_text()
    assert html.index("Transfer verdict") < html.index("Label budgets")  # the summary comes first
    assert f"Transfer verdict: {metrics['verdict'].upper()}" in html and html.count("data:image/png;base64,") == 7
    # the headline's all-labels sentence quotes the very numbers of the side-by-side table
    headline = next(line for line in html.split("<li>") if line.startswith("With all"))
    assert f"reaches {full['finetuned_accuracy']} and the scratch baseline {full['scratch_accuracy']}" in headline
    assert f": {full['verdict']}." in headline
    missing = {k: v for k, v in flatten(metrics).items() if f">{fmt(v)}<" not in html}
    assert not missing, f"numbers of metrics.json missing from the report: {list(missing.items())[:5]}"


@pytest.mark.timeout(1800)
def test_an_unlabelled_shift_batch_is_left_out_of_the_verdict_and_said_so(chain):
    """shift.source an unlabelled batch (what a service sampled): the drift stage checks it; evaluate decides the
    verdict on the other comparisons, and its metrics, report and plots say the batch was not scored, and why."""
    batch = chain["work"] / "served-batch"
    batch.mkdir()
    for i, (_, data) in zip(range(12), iter_records(chain["dataset"])):
        (batch / f"{i:02d}.png").write_bytes(data)  # a flat folder: no labels
    current = chain["work"] / "unlabelled-current"
    shift.run(validate_params({**SMALL, "shift": {"source": str(batch)}}),
              shift.Args(dataset=chain["dataset"], current=current, metrics=chain["work"] / "su.json",
                         report_dir=chain["work"] / "rsu"))
    out = chain["work"] / "eval-unlabelled"
    metrics = _evaluate(chain, current, out)
    assert metrics["shift"] is None and metrics["shift_unscored"].startswith("12 of its 12 image(s) have no label")
    assert list(metrics["models"]) == ["test"] and set(metrics["shift_accuracy"].values()) == {None}
    assert metrics["verdict"] in ("positive", "no_gain", "negative", "inconclusive") and metrics["verdict_reason"]
    # DVC declares the robustness table and figure: a table of no rows, a figure that says why
    assert (out / "plots" / "robustness.csv").read_text().strip() == "model,corruption,severity,accuracy"
    assert (out / "plots" / "robustness.png").stat().st_size > 0
    html = (out / "report" / "report.html").read_text()
    assert f"Not measured: the domain-shift set {metrics['shift_unscored']}" in html
    assert "The domain-shift set is not compared: 12 of its 12" in html


def test_evaluate_names_a_missing_input(chain, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = ["evaluate", "--dataset", chain["dataset"], "--current", chain["current"], "--plan", chain["plan"],
            "--finetuned", chain["work"] / "nope", "--finetune-history", "x", "--baseline", chain["baseline"],
            "--baseline-history", "y", "--scratch-curve", chain["scratch_curve"], "--metrics", "m", "--plots", "p",
            "--report-dir", "r",
            "--validation", passed_gate(chain["work"])]
    assert tlops([str(a) for a in argv]) == 2
    assert "nope/card.json: file not found" in capsys.readouterr().err


def _shuffle_labels(src: Path, dest: Path) -> Path:
    """A copy of the dataset whose labels are a random permutation: nothing to transfer."""
    shutil.copytree(src, dest)
    manifest = read_manifest(dest)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        rows = manifest["split"] == split
        manifest.loc[rows, "label_idx"] = rng.permutation(manifest.loc[rows, "label_idx"].to_numpy())
    write_manifest(dest, manifest)
    return dest


@pytest.mark.timeout(1800)
def test_with_random_labels_the_verdict_is_not_positive(chain):
    dataset = _shuffle_labels(chain["dataset"], chain["work"] / "random_labels")
    manifest = read_manifest(dataset)
    pool, val = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    params = validate_params(SMALL)
    classes = read_classes(dataset)
    model = LoadedModel.pretrained(MODEL, len(classes), 32, classes=classes)
    pool_ids, val_ids = pool["id"].tolist(), val["id"].tolist()[:30]
    features = embed_splits(model, dataset, pool_ids, val_ids, 256)
    setup = Setup(dataset, MODEL, classes, 32, params.train, torch.device("cpu"), None)
    scratch = scratch_side(setup, params.baseline, pool_ids, pool["label_idx"].tolist(), val_ids, [2], [0, 1, 2],
                           majority_accuracy(features.test_labels)).curve
    learnt = label_efficiency(scratch, "scratch_runs.json", features, pool_ids, len(classes), params.freeze.probe_cs,
                              0.95, 0.0)
    (point,) = learnt["budgets"]
    assert abs(point["transfer"]["mean"] - 0.1) < 0.1  # chance level: nothing to learn
    assert point["verdict"] != "positive", point["reason"]


@pytest.mark.timeout(1200)
def test_the_curve_shares_the_baselines_run_where_a_draw_is_it(chain):
    """With 5 labels a class, a budget of 5 draws the whole pool: seed 0 (the baseline's) is the baseline's run,
    trained once in the stage's pool: on two threads, two worker processes, the baseline in one of them."""
    params = validate_params({**SMALL, "curve": {"budgets": [5], "seeds": [0, 1, 2], "val_per_class": 3}})
    out = chain["work"] / "shared"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the stage's share on the 2-core machine (the suite's workers run on one)
    try:
        summary = baseline.run(params, baseline.Args(
            dataset=chain["dataset"], architecture=chain["architecture"], model_dir=out / "model",
            metrics=out / "baseline.json", history=out / "bl.csv", plot=out / "bl.png", checkpoints=out / "ck",
            curve=out / "runs.json", curve_metrics=out / "metrics.json", live=out / "live"))["curve"]
    finally:
        torch.set_num_threads(threads)
    assert summary["workers"] == 2 and summary["threads_per_run"] == 1
    assert (out / "model" / "model.pt").is_file() and (out / "live" / "metrics.json").is_file()  # from its worker
    runs = json.loads((out / "runs.json").read_text())["runs"]
    baseline_metrics = json.loads((out / "baseline.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["curve"] == summary
    assert [r.get("shared_with") for r in runs] == ["baseline", None, None]
    assert summary["trained"] == 2 and summary["shared"] == 1
    assert runs[0]["accuracy"] == round(baseline_metrics["test_accuracy"], 4)
    assert runs[0]["steps"] == baseline_metrics["optimizer_steps"] and runs[0]["n_labels"] == 50
    assert baseline_metrics["threads"] == 1 and [r["threads"] for r in runs] == [1, 1, 1]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    assert all(r["n_labels"] == 50 and r["val_images"] == 30 for r in runs[1:])  # trained on the curve's val images
    assert len({tuple(r["train_ids"]) for r in runs}) == 1  # every seed draws the whole pool
