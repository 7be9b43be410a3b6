"""The baseline and evaluate stages end to end on the real digits (32 px, few steps), and the honesty checks:
transfer beats scratch at a small label budget; with random labels the verdict is not positive;
the report holds the numbers metrics.json holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.stages import baseline, finetune, ingest, shift
from pipeline.cli import main as tlops
from pipeline.config import Params, validate_params
from pipeline.data.shards import read_manifest, write_manifest
from pipeline.evaluation.label_efficiency import run_curve, summarise_curve
from pipeline.evaluation.report import flatten, fmt
from pipeline.evaluation.label_efficiency import curve_train_fn
from pipeline.training.recipes import Setup
from pipeline.evaluation.verdict import overall_verdict
from pipeline.freezing.blocks import block_param_counts
from pipeline.freezing.plan import FreezePlan, build_phases
from pipeline.models import LoadedModel, get_spec
from tests.support.gate import passed_gate

pytestmark = pytest.mark.slow  # trains real networks (tiny budgets, 32 px)
ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
SMALL = {
    "common": {"image_size": 32},
    "ingest": {"digits_size": 32, "budget_per_class": 5},
    "shift": {"corruptions": ["gaussian_noise"], "severities": [5]},
    "freeze": {"lp_epochs": 5},
    "finetune": {"augment": "none", "batch_size": 32},
    "baseline": {"steps": 4},
    "evaluate": {"budgets": [2], "seeds": [0, 1, 2], "curve_steps": 8, "curve_val_per_class": 2,
                 "shift_per_cell": 8, "attack_images": 16, "interpret_classes": 2, "ideal_steps": 5,
                 "adversarial_max_steps": 10, "fgsm_epsilons": [0.0, 0.03]},
}
OVERRIDES = [f"{section}.{key}={json.dumps(value)}" for section, values in SMALL.items() if section == "evaluate"
             for key, value in values.items()] + ["common.image_size=32"]


def _probe_plan(params: Params) -> FreezePlan:
    """A linear-probe freeze plan for the test backbone (what `tlops freeze` writes for few labels)."""
    spec = get_spec(MODEL)
    counts = block_param_counts(LoadedModel.scratch(MODEL, 10, 32).network, spec.blocks)
    phases = build_phases("linear_probe", len(spec.blocks) - 1, params.freeze, spec.blocks, counts)
    return FreezePlan(model=MODEL, strategy="linear_probe", requested="linear_probe", blocks=list(spec.blocks),
                      bn_policy="eval_all", phases=phases, block_params=counts, why=["test plan"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """ingest -> shift -> (plan) -> finetune -> baseline on the digits at 32 px."""
    work = tmp_path_factory.mktemp("chain")
    params = validate_params(SMALL)
    p = {name: work / name for name in ("dataset", "current", "finetuned", "baseline", "ck")}
    p["plan"] = _probe_plan(params).save(work / "plan.json")
    ingest.run(params, ingest.Args(dataset=p["dataset"], metrics=work / "i.json", report_dir=work / "ri"))
    shift.run(params, shift.Args(dataset=p["dataset"], current=p["current"], metrics=work / "s.json",
                                 report_dir=work / "rs"))
    finetune.run(params, finetune.Args(dataset=p["dataset"], plan=p["plan"], model_dir=p["finetuned"],
                                       metrics=work / "ft.json", history=work / "ft.csv", plot=work / "ft.png",
                                       checkpoints=p["ck"] / "ft"))
    p["baseline_metrics"] = work / "bl.json"
    baseline.run(params, baseline.Args(dataset=p["dataset"], plan=p["plan"], finetuned=p["finetuned"],
                                       model_dir=p["baseline"], metrics=p["baseline_metrics"], history=work / "bl.csv",
                                       plot=work / "bl.png", checkpoints=p["ck"] / "bl"))
    p["work"] = work
    return p


@pytest.mark.timeout(1800)  # includes building the chain (module fixture)
def test_baseline_trains_from_scratch_for_the_asked_steps(chain):
    metrics = json.loads(chain["baseline_metrics"].read_text())
    card = json.loads((chain["baseline"] / "card.json").read_text())
    assert card["init"] == "random" and card["model"] == MODEL
    assert metrics["optimizer_steps"] >= 4 and metrics["lr"] == 0.003
    assert metrics["trainable_params"] == sum(card["freeze_plan"]["block_params"])  # nothing frozen
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


@pytest.mark.timeout(1800)  # a few minutes on an idle 2-core CPU; far more when the machine is shared
def test_evaluate_cli_writes_metrics_plots_and_a_report_with_the_same_numbers(chain, monkeypatch, capsys):
    out = chain["work"] / "eval"
    monkeypatch.chdir(ROOT)
    argv = ["evaluate", "--dataset", chain["dataset"], "--current", chain["current"], "--plan", chain["plan"],
            "--finetuned", chain["finetuned"], "--finetune-history", chain["work"] / "ft.csv",
            "--baseline", chain["baseline"], "--baseline-history", chain["work"] / "bl.csv",
            "--metrics", out / "metrics.json", "--plots", out / "plots", "--report-dir", out / "report",
            "--validation", passed_gate(out)]
    assert tlops([str(a) for a in argv] + [x for o in OVERRIDES for x in ("--set", o)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the first claim: on the digits at a small label budget, transfer beats scratch
    point = metrics["label_efficiency"]["curve"][0]
    assert point["name"] == "2/class" and point["transfer"]["mean"] > point["scratch"]["mean"]
    assert metrics["verdict"] in ("positive", "no_gain", "negative")
    assert set(metrics["test_accuracy"]) == {"finetuned", "linear_probe", "scratch"}
    assert set(metrics["robustness"]["scratch"]) == {"none", "gaussian_noise"}
    for name in ("label_efficiency", "robustness", "learning_curves", "fgsm"):
        assert (out / "plots" / f"{name}.csv").stat().st_size > 0 and (out / "plots" / f"{name}.png").is_file()
    html = (out / "report" / "report.html").read_text()
    assert html.index("Transfer verdict") < html.index("Label efficiency")  # the summary comes first
    assert "With 2 labels per class" in html and html.count("data:image/png;base64,") == 7
    missing = {k: v for k, v in flatten(metrics).items() if f">{fmt(v)}<" not in html}
    assert not missing, f"numbers of metrics.json missing from the report: {list(missing.items())[:5]}"
    assert json.loads(capsys.readouterr().out)["verdict"] == metrics["verdict"]


def test_evaluate_names_a_missing_input(chain, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = ["evaluate", "--dataset", chain["dataset"], "--current", chain["current"], "--plan", chain["plan"],
            "--finetuned", chain["work"] / "nope", "--finetune-history", "x", "--baseline", chain["baseline"],
            "--baseline-history", "y", "--metrics", "m", "--plots", "p", "--report-dir", "r",
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
    train, val = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    params = validate_params(SMALL)
    classes = [str(c) for c in range(10)]
    setup = Setup(dataset, MODEL, classes, 32, params.finetune, torch.device("cpu"), chain["work"] / "rl")
    train_fn = curve_train_fn(setup, train["id"].tolist(), val["id"].tolist()[:20], 8, 0.01, 0.003)
    rows = run_curve(train["label_idx"].to_numpy(), [2], [0, 1, 2], train_fn)
    summary = summarise_curve(rows)
    assert all(abs(p["transfer"]["mean"] - 0.1) < 0.1 for p in summary)  # chance level: nothing to learn
    assert overall_verdict([p["verdict"] for p in summary]) != "positive"
