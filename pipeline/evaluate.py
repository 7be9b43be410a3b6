"""Stage ``evaluate``: transfer vs scratch on the user's own data, honestly.

Scores the fine-tuned model, a linear probe (trained here on the same backbone, by the engine) and the
scratch baseline on the test split and the domain-shift set (accuracy, macro-F1, per-class P/R/F1,
confusion, calibration error, robustness per corruption and severity, cost); trains the
label-efficiency curve (transfer and scratch at each budget x seed, same subsets and steps) and from
it decides the verdict (pipeline/evaluation/verdict.py), "labels saved" and, from the learning
curves, "time saved"; shows what the models learned (ideal inputs, adversarial pairs, FGSM).
Inputs: the dataset, the domain-shift set, ``freeze_plan.json``, the fine-tuned and baseline model
directories and their ``history.csv``.
Outputs: ``metrics.json`` (DVC metrics), a plots folder (CSV for ``dvc plots`` + PNGs), and
``report.html`` (self-contained) in the report folder.
Params: ``common`` and ``evaluate``; the loop settings and learning rates of the extra runs come from
the fine-tuned and baseline model cards, so that they match the models being compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import FinetuneParams, FreezeParams, Params
from pipeline.data.shards import read_classes, read_manifest, use_validated, validation_field
from pipeline.evaluation.assess import Subject, attack_set, explain, score, shift_sample
from pipeline.evaluation.label_efficiency import labels_saved, run_curve, sample_per_class, summarise_curve, time_saved
from pipeline.evaluation.outputs import write_plots
from pipeline.evaluation.report import write_report
from pipeline.evaluation.runner import Setup, curve_train_fn, elapsed_curve, train_one
from pipeline.evaluation.verdict import announce, overall_verdict
from pipeline.training.modelcard import InferenceModel, load_for_inference
from pipeline.training.plan import FreezePlan, load_plan

__all__ = ["Args", "run"]
log = get_logger(__name__)
MODELS = ("finetuned", "linear_probe", "scratch")


@dataclass
class Args:
    """Paths of the evaluate stage."""

    dataset: Path = field(metadata={"help": "dataset directory (test split scored, train split for the curve)"})
    current: Path = field(metadata={"help": "domain-shift set written by `tlops shift`"})
    plan: Path = field(metadata={"help": "freeze_plan.json (architecture, linear-probe phase)"})
    finetuned: Path = field(metadata={"help": "fine-tuned model directory"})
    finetune_history: Path = field(metadata={"help": "the fine-tune's history.csv (learning curve)"})
    baseline: Path = field(metadata={"help": "scratch baseline model directory"})
    baseline_history: Path = field(metadata={"help": "the baseline's history.csv (learning curve)"})
    metrics: Path = field(metadata={"help": "metrics.json to write (DVC metrics)"})
    plots: Path = field(metadata={"help": "folder for plot data (CSV) and PNGs"})
    report_dir: Path = field(metadata={"help": "folder for report.html"})
    validation: Path | None = validation_field()


def _probe_settings(plan: FreezePlan) -> tuple[int, float]:
    """Epochs and lr of the linear probe: the plan's probe phase, else the freeze defaults."""
    for phase in plan.phases:
        if phase.name == "linear_probe":
            return phase.epochs, max(phase.lrs.values())
    defaults = FreezeParams()
    return defaults.lp_epochs, defaults.lp_lr


def _history_curve(path: Path, card: dict) -> list[dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: history missing (run the stage that trains this model first)")
    rows = pd.read_csv(path)
    missing = [c for c in ("epoch", "seconds", "val_accuracy") if c not in rows.columns]
    if missing:
        raise ValueError(f"{path}: history lacks columns {missing}")
    cached = any(mode != "off" for mode in card["metrics"].get("cache", []))
    return elapsed_curve(rows.to_dict("records"), card["metrics"].get("train_seconds"), upfront=cached)


def _subject(name: str, loaded: InferenceModel) -> Subject:
    card = loaded.card
    return Subject(name, loaded.model, card["input_size"], card["mean"], card["std"], loaded.device)


def _curve(params: Params, setup: Setup, plan: FreezePlan, probe_lr: float, scratch_lr: float) -> dict:
    """Label-efficiency runs, their summary, labels saved and the per-budget verdicts."""
    cfg, seed = params.evaluate, params.common.seed
    manifest = read_manifest(setup.dataset)
    train, val = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    val_ids = val["id"].to_numpy()[sample_per_class(val["label_idx"], cfg.curve_val_per_class, seed)].tolist()
    # every curve run spends its whole step budget: early stopping would cut the slow starter (scratch)
    curve_setup = Setup(**{**setup.__dict__, "image_size": cfg.curve_image_size or setup.image_size,
                           "cfg": setup.cfg.model_copy(update={"patience": 0})})
    train_fn = curve_train_fn(curve_setup, train["id"].tolist(), val_ids, cfg.curve_steps, probe_lr, scratch_lr,
                              plan if cfg.curve_transfer == "plan" else None)
    rows = run_curve(train["label_idx"].to_numpy(), cfg.budgets, cfg.seeds, train_fn)
    summary = summarise_curve(rows, cfg.confidence, cfg.interval, cfg.min_gain)
    return {"transfer": cfg.curve_transfer, "image_size": curve_setup.image_size, "steps": cfg.curve_steps,
            "seeds": cfg.seeds, "confidence": cfg.confidence, "interval": cfg.interval, "curve": summary,
            "labels_saved": labels_saved(summary), "runs": rows}


def _verdict(curve: list[dict]) -> tuple[str, str]:
    verdict = overall_verdict([p["verdict"] for p in curve])
    deciding = next((p for p in curve if p["verdict"] == verdict), curve[-1])
    t, s = deciding["transfer"], deciding["scratch"]
    reason = (f"at {deciding['name']} ({deciding['n_labels']} labels): transfer {t['mean']} [{t['low']}, {t['high']}] "
              f"vs scratch {s['mean']} [{s['low']}, {s['high']}]")
    return verdict, reason


def run(params: Params, args: Args) -> dict:
    """Evaluate, decide the verdict and write metrics, plots and the HTML report.

    Args:
        params: validated params (reads ``common`` and ``evaluate``).
        args: stage paths.
    Returns:
        Summary: verdict, test accuracy of each model, labels saved, output paths.
    """
    use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.evaluate
    seed_everything(common.seed)
    device = select_device(common.device)
    plan, classes = load_plan(args.plan), read_classes(args.dataset)
    finetuned, scratch = load_for_inference(args.finetuned, device), load_for_inference(args.baseline, device)
    loop_cfg = FinetuneParams(**finetuned.card["params"]["finetune"])
    probe_epochs, probe_lr = _probe_settings(plan)
    budget = read_manifest(args.dataset).query("split == 'train' and in_budget")["id"].tolist()
    # every run here is throwaway (none is resumed or kept), so none writes checkpoints
    setup = Setup(Path(args.dataset), plan.model, len(classes), common.image_size, loop_cfg, device, None,
                  common.num_workers)
    probe = train_one(setup, None, True, common.seed, budget, epochs=probe_epochs, lr=probe_lr, score_test=False)
    curve = _curve(params, setup, plan, probe_lr, scratch.card["params"]["baseline"]["lr"])
    subjects = {"finetuned": _subject("finetuned", finetuned),
                "linear_probe": Subject("linear_probe", probe.model.eval(), common.image_size,
                                        finetuned.card["mean"], finetuned.card["std"], device),
                "scratch": _subject("scratch", scratch)}
    shift_ids = shift_sample(args.current, cfg.shift_per_cell, common.seed)
    batch = loop_cfg.eval_batch_size
    scores = {name: score(s, args.dataset, args.current, shift_ids, classes, cfg.ece_bins, batch)
              for name, s in subjects.items()}
    images, labels = attack_set(args.dataset, common.image_size, cfg.attack_images, common.seed)
    show = list(range(min(cfg.interpret_classes, len(classes))))
    explained = {name: explain(subjects[name], images, labels, show, cfg.fgsm_epsilons, cfg.ideal_steps,
                               cfg.tv_weight, cfg.adversarial_step, cfg.adversarial_max_steps, common.seed)
                 for name in MODELS}
    learning = {"finetuned": _history_curve(args.finetune_history, finetuned.card),
                "scratch": _history_curve(args.baseline_history, scratch.card)}
    verdict, reason = _verdict(curve["curve"])
    announce(verdict, reason)
    metrics = _metrics(verdict, reason, scores, curve, learning, explained, finetuned, scratch, probe, classes, show)
    figures = write_plots(args.plots, metrics, learning, explained, classes, show)
    write_json(args.metrics, metrics)
    report = write_report(Path(args.report_dir) / "report.html", metrics, figures)
    return {"verdict": verdict, "reason": reason, "test_accuracy": metrics["test_accuracy"],
            "labels_saved": curve["labels_saved"]["labels_saved"], "report": str(report), "metrics": str(args.metrics)}


def _metrics(verdict: str, reason: str, scores: dict, curve: dict, learning: dict, explained: dict,
             finetuned: InferenceModel, scratch: InferenceModel, probe, classes: list[str], show: list[int]) -> dict:
    """Everything metrics.json holds (the report renders exactly this)."""
    ft_card, sc_card = finetuned.card, scratch.card
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
    return {
        "verdict": verdict, "verdict_reason": reason,
        "test_accuracy": {name: scores[name]["test"]["accuracy"] for name in MODELS},
        "shift_accuracy": {name: scores[name]["shift"]["accuracy"] for name in MODELS},
        "models": {split: {name: scores[name][split] for name in MODELS} for split in ("test", "shift")},
        "robustness": {name: scores[name]["robustness"] for name in MODELS},
        "cost": cost,
        "label_efficiency": curve,
        "time_saved": time_saved(learning["finetuned"], learning["scratch"]),
        "fgsm": {name: e["fgsm"] for name, e in explained.items()},
        "adversarial": adversarial,
        "ideal_inputs": {name: {classes[c]: p for c, p in zip(show, e["ideal"][1])} for name, e in explained.items()},
    }

