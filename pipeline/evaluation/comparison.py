"""The pieces of the evaluate stage: the linear probe's settings, the learning curves, the label-efficiency
curve, the verdict and its reason, and the metrics.json the report renders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import EvaluateParams, FreezeParams
from pipeline.data.shards import read_manifest, train_in_budget
from pipeline.evaluation.label_efficiency import (curve_train_fn, elapsed_curve, labels_saved, run_curve,
                                                  sample_per_class, summarise_curve, time_saved)
from pipeline.evaluation.verdict import overall_verdict
from pipeline.freezing.plan import FreezePlan
from pipeline.models import LoadedModel
from pipeline.training.recipes import Setup, Trained

__all__ = ["MODELS", "probe_settings", "history_curve", "label_efficiency", "verdict_of", "assemble_metrics"]
MODELS = ("finetuned", "linear_probe", "scratch")


def probe_settings(plan: FreezePlan) -> tuple[int, float]:
    """Epochs and lr of the linear probe: the plan's probe phase, else the freeze defaults."""
    for phase in plan.phases:
        if phase.name == "linear_probe":
            return phase.epochs, max(phase.lrs.values())
    defaults = FreezeParams()
    return defaults.lp_epochs, defaults.lp_lr


def history_curve(path: Path, card: dict) -> list[dict]:
    """A trained model's learning curve (val accuracy against training seconds) from its history.csv."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: history missing (run the stage that trains this model first)")
    rows = pd.read_csv(path)
    missing = [c for c in ("epoch", "seconds", "val_accuracy") if c not in rows.columns]
    if missing:
        raise ValueError(f"{path}: history lacks columns {missing}")
    cached = any(mode != "off" for mode in card["metrics"].get("cache", []))
    return elapsed_curve(rows.to_dict("records"), card["metrics"].get("train_seconds"), upfront=cached)


def label_efficiency(cfg: EvaluateParams, seed: int, setup: Setup, plan: FreezePlan, probe_lr: float,
                     scratch_lr: float) -> dict:
    """Label-efficiency runs on the budgeted train labels, their summary, labels saved, per-budget verdicts."""
    manifest = read_manifest(setup.dataset)
    train, val = train_in_budget(manifest, setup.dataset), manifest[manifest["split"] == "val"]
    val_ids = val["id"].to_numpy()[sample_per_class(val["label_idx"], cfg.curve_val_per_class, seed)].tolist()
    # every curve run spends its whole step budget: early stopping would cut the slow starter (scratch)
    curve_setup = replace(setup, image_size=cfg.curve_image_size or setup.image_size,
                          cfg=setup.cfg.model_copy(update={"patience": 0}))
    train_fn = curve_train_fn(curve_setup, train["id"].tolist(), val_ids, cfg.curve_steps, probe_lr, scratch_lr,
                              plan if cfg.curve_transfer == "plan" else None)
    rows = run_curve(train["label_idx"].to_numpy(), cfg.budgets, cfg.seeds, train_fn)
    summary = summarise_curve(rows, cfg.confidence, cfg.interval, cfg.min_gain)
    transfer_weights = sorted({r["weights_sha256"] for r in rows if r["side"] == "transfer" and r["weights_sha256"]})
    return {"transfer": cfg.curve_transfer, "image_size": curve_setup.image_size, "steps": cfg.curve_steps,
            "seeds": cfg.seeds, "confidence": cfg.confidence, "interval": cfg.interval, "curve": summary,
            "labels_saved": labels_saved(summary), "transfer_weights_sha256": transfer_weights, "runs": rows}


def verdict_of(curve: list[dict]) -> tuple[str, str]:
    """The overall verdict over the curve's budgets, and the comparison that decided it."""
    verdict = overall_verdict([p["verdict"] for p in curve])
    deciding = next((p for p in curve if p["verdict"] == verdict), curve[-1])
    t, s = deciding["transfer"], deciding["scratch"]
    reason = (f"at {deciding['name']} ({deciding['n_labels']} labels): transfer {t['mean']} [{t['low']}, {t['high']}] "
              f"vs scratch {s['mean']} [{s['low']}, {s['high']}]")
    return verdict, reason


def assemble_metrics(verdict: str, reason: str, scores: dict, curve: dict, learning: dict, explained: dict,
                     models: dict[str, LoadedModel], probe: Trained, classes: list[str], show: list[int]) -> dict:
    """Everything metrics.json holds (the report renders exactly this)."""
    ft_card, sc_card = models["finetuned"].card, models["scratch"].card
    cost = {
        "finetuned": {"trainable_params": ft_card["freeze_plan"]["trainable_params"],
                      "train_seconds": ft_card["metrics"].get("train_seconds")},
        "linear_probe": {"trainable_params": probe.plan.phases[0].trainable_params,
                         "train_seconds": round(probe.seconds, 2)},
        "scratch": {"trainable_params": sc_card["metrics"]["trainable_params"],
                    "train_seconds": sc_card["metrics"]["train_seconds"]},
    }
    for name in MODELS:
        cost[name]["images_per_s"] = scores[name]["images_per_s"]
    adversarial = {name: [{k: v for k, v in pair.items() if k not in ("original", "adversarial")}
                          for pair in e["pairs"]] for name, e in explained.items()}
    weights: dict[str, Any] = {name: model.fingerprint() for name, model in models.items()}
    return {
        "verdict": verdict, "verdict_reason": reason,
        "test_accuracy": {name: scores[name]["test"]["accuracy"] for name in MODELS},
        "shift_accuracy": {name: scores[name]["shift"]["accuracy"] for name in MODELS},
        "models": {split: {name: scores[name][split] for name in MODELS} for split in ("test", "shift")},
        "robustness": {name: scores[name]["robustness"] for name in MODELS},
        "cost": cost,
        "weights": weights,
        "label_efficiency": curve,
        "time_saved": time_saved(learning["finetuned"], learning["scratch"]),
        "fgsm": {name: e["fgsm"] for name, e in explained.items()},
        "adversarial": adversarial,
        "ideal_inputs": {name: {classes[c]: p for c, p in zip(show, e["ideal"][1])} for name, e in explained.items()},
    }
