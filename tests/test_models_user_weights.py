"""User-supplied pretrained weights reach every stage that uses the pretrained backbone.

A small timm network's state dict is written by the test with its sha256 and given to selection
(``select.weights``). The chain select -> freeze -> finetune -> baseline -> evaluate -> drift then
runs on a tiny pattern dataset, and each stage's outputs name the weights it loaded: the fine-tune's
card, the evaluation's linear probe and label-efficiency transfer runs, and drift's model. The frozen
backbone of the fine-tuned model must hold the user's tensors exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch

from pipeline.config import validate_params
from pipeline.models import LoadedModel
from pipeline.stages import baseline, drift, evaluate, finetune, freeze, select, shift
from pipeline.validation.dataset import profile_dataset
from tests.support.gate import passed_gate
from tests.support.training_data import write_dataset

MODEL = "timm:test_efficientnet"
pytestmark = pytest.mark.slow  # a whole (tiny) chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("user-weights")
    torch.manual_seed(7)
    weights = work / "my_test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    params = validate_params({
        "common": {"image_size": 32},
        "shift": {"corruptions": ["gaussian_noise"], "severities": [5], "per_cell": 4},
        "select": {"candidates": [MODEL], "weights": {MODEL: {"uri": str(weights), "sha256": sha}},
                   "sample_per_class": 6, "cv_folds": 2, "bootstrap": 20, "logme_subsamples": 4, "latency_runs": 2},
        "freeze": {"strategy": "linear_probe"},
        "train": {"batch_size": 16, "augment": "none", "min_epoch_steps": 1},
        "baseline": {"max_epochs": 2},
        "curve": {"budgets": [2], "seeds": [0, 1, 2], "val_per_class": 2},
        "evaluate": {"attack_images": 4, "interpret_classes": 1, "ideal_steps": 2, "adversarial_max_steps": 2,
                     "fgsm_epsilons": [0.0]},
        "drift": {"permutations": 50, "top_outliers": 2},
    })
    ds = write_dataset(work / "ds", {"train": 36, "val": 12, "test": 12})
    gate = passed_gate(work)
    p = {name: work / name for name in ("sel", "plan", "ft", "bl", "current", "ev", "drift")}
    select.run(params, select.Args(ds, work / "features", p["sel"] / "selection.json", p["sel"] / "m.json",
                                   p["sel"] / "plot.png", gate, p["sel"] / "architecture.json"))
    freeze.run(params, freeze.Args(ds, p["sel"] / "selection.json", p["plan"] / "plan.json", p["plan"] / "m.json",
                                   gate))
    finetune.run(params, finetune.Args(ds, p["plan"] / "plan.json", p["ft"] / "model", p["ft"] / "m.json",
                                       p["ft"] / "history.csv", p["ft"] / "curves.png", p["ft"] / "ckpt",
                                       validation=gate))
    baseline.run(params, baseline.Args(ds, p["sel"] / "architecture.json", p["bl"] / "model", p["bl"] / "m.json",
                                       p["bl"] / "history.csv", p["bl"] / "curves.png", p["bl"] / "ckpt",
                                       p["bl"] / "runs.json", p["bl"] / "curve.json", gate))
    shift.run(params, shift.Args(ds, p["current"], work / "shift.json", work / "shift-report", gate))
    evaluate.run(params, evaluate.Args(ds, p["current"], p["plan"] / "plan.json", p["ft"] / "model",
                                       p["ft"] / "history.csv", p["bl"] / "model", p["bl"] / "history.csv",
                                       p["bl"] / "runs.json", p["ev"] / "metrics.json", p["ev"] / "plots",
                                       p["ev"] / "report", gate))
    profile_dataset(ds, params.validate_).to_parquet(work / "profile.parquet")
    drift.run(params, drift.Args(ds, work / "profile.parquet", p["current"], p["ft"] / "model",
                                 p["drift"] / "drift.json", p["drift"] / "reports", work / "workspace", gate))
    return {"sha": sha, "weights": weights, **p}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_selection_and_finetune_load_the_users_file(chain):
    assert _json(chain["sel"] / "selection.json")["weights"]["sha256"] == chain["sha"]
    card = _json(chain["ft"] / "model" / "card.json")
    assert card["weights"] == {"uri": str(chain["weights"]), "sha256": chain["sha"]}
    assert _json(chain["ft"] / "m.json")["weights_sha256"] == chain["sha"]
    # a linear probe leaves the backbone as loaded: it holds the user's tensors, bit for bit
    user = torch.load(chain["weights"], weights_only=True)
    tuned = LoadedModel.load(chain["ft"] / "model").network.state_dict()
    assert torch.equal(tuned["conv_stem.weight"], user["conv_stem.weight"])
    assert torch.equal(tuned["blocks.0.0.conv.weight"], user["blocks.0.0.conv.weight"])
    assert torch.equal(tuned["bn1.running_mean"], user["bn1.running_mean"])  # BatchNorm statistics kept too


def test_evaluation_probe_and_curve_use_the_users_weights(chain):
    metrics = _json(chain["ev"] / "metrics.json")
    assert metrics["weights"]["linear_probe"]["pretrained_weights"]["sha256"] == chain["sha"]
    assert metrics["weights"]["finetuned"]["pretrained_weights"]["sha256"] == chain["sha"]
    assert metrics["weights"]["scratch"]["pretrained_weights"]["uri"] == "random-init"
    assert metrics["label_efficiency"]["transfer_weights_sha256"] == [chain["sha"]]
    transfer_runs = [r for r in metrics["label_efficiency"]["runs"] if r["side"] == "transfer"]
    assert transfer_runs and all(r["weights_sha256"] == chain["sha"] for r in transfer_runs)


def test_drift_embeds_with_the_fine_tuned_model_of_the_users_weights(chain):
    model = _json(chain["drift"] / "drift.json")["model"]
    assert model["pretrained_weights"]["sha256"] == chain["sha"]
    assert model["state_dict_sha256"] == _json(chain["ft"] / "model" / "card.json")["state_dict_sha256"]


def test_evaluate_and_drift_report_one_accuracy_on_the_shifted_set(chain):
    # both score the whole current set (shift.per_cell images per cell) with the same fine-tuned model
    evaluation, drifted = _json(chain["ev"] / "metrics.json"), _json(chain["drift"] / "drift.json")
    assert evaluation["shift_accuracy"]["finetuned"] == pytest.approx(drifted["accuracy_current"], abs=1e-4)
    assert evaluation["models"]["shift"]["finetuned"]["n"] == drifted["n_current"]
