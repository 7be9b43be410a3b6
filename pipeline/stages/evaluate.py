"""Stage ``evaluate``: transfer vs scratch on the user's own data, honestly.

The verdict (pipeline/evaluation/verdict.py) reads every comparison, each against a converged scratch
model: the label-efficiency curve (at each budget x seed, the probe solved on the pretrained features
against the architecture trained from scratch to convergence, on the same labels), the fine-tuned
model against the scratch baseline with all labels (exact McNemar on the same test images), and the
same on the domain-shift set. A scratch model that failed (one class, or below the majority class or
a logistic regression on raw pixels) or did not converge makes its comparison inconclusive, never
evidence for transfer. "Labels saved" and "time saved" are measured against the converged baseline.
It also scores the fine-tuned model, the linear probe and the scratch baseline on the test split and
the shift set (accuracy, macro-F1, per-class P/R/F1, confusion, calibration, robustness per corruption
and severity, cost) and shows what they learned (ideal inputs, adversarial pairs, FGSM).
Inputs: the dataset, the domain-shift set, ``freeze_plan.json``, the fine-tuned and baseline model
directories and their ``history.csv``.
Outputs: ``metrics.json`` (DVC metrics; ``weights`` names the weights behind every model;
``recommended_model`` tells promotion which model is better), a plots folder (CSV for ``dvc plots`` +
PNGs), and ``report.html`` (self-contained) in the report folder.
Params: ``common`` and ``evaluate``; the scratch runs' settings come from the baseline's card and the
loop's from the fine-tune's, so that the curve's scratch side is the baseline's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.faults import kill_point
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import BaselineParams, FinetuneParams, FreezeParams, Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.evaluation.assess import attack_set, explain, score, shift_ids
from pipeline.evaluation.comparison import (MODELS, assemble_metrics, embed_splits, full_label_comparison,
                                            history_curve, label_efficiency, recommend)
from pipeline.evaluation.label_efficiency import drawable_budgets, labels_saved, sample_per_class
from pipeline.evaluation.outputs import write_plots
from pipeline.evaluation.references import majority_accuracy, pixel_probe_accuracy, training_problem
from pipeline.evaluation.report import write_report
from pipeline.evaluation.verdict import announce
from pipeline.freezing.plan import load_plan
from pipeline.models import LoadedModel
from pipeline.stages.protocol import use_validated, validation_field
from pipeline.training.probe import fit_linear_probe, set_head
from pipeline.training.recipes import Setup

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the evaluate stage."""

    dataset: Path = field(metadata={"help": "dataset directory (test split scored, train split for the curve)"})
    current: Path = field(metadata={"help": "domain-shift set written by `tlops shift`"})
    plan: Path = field(metadata={"help": "freeze_plan.json (architecture, weights, the probe's penalties)"})
    finetuned: Path = field(metadata={"help": "fine-tuned model directory"})
    finetune_history: Path = field(metadata={"help": "the fine-tune's history.csv (learning curve)"})
    baseline: Path = field(metadata={"help": "scratch baseline model directory"})
    baseline_history: Path = field(metadata={"help": "the baseline's history.csv (learning curve)"})
    metrics: Path = field(metadata={"help": "metrics.json to write (DVC metrics)"})
    plots: Path = field(metadata={"help": "folder for plot data (CSV) and PNGs"})
    report_dir: Path = field(metadata={"help": "folder for report.html"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict:
    """Compare, decide the verdict and write metrics, plots and the HTML report.

    Args:
        params: validated params (reads ``common`` and ``evaluate``).
        args: stage paths.
    Returns:
        Summary: verdict, its reason, test accuracy of each model, labels saved, the recommended model, paths.
    """
    dataset = use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.evaluate
    seed_everything(common.seed)
    device = select_device(common.device)
    plan, classes = load_plan(args.plan), read_classes(dataset)
    finetuned, scratch = LoadedModel.load(args.finetuned, device), LoadedModel.load(args.baseline, device)
    loop_cfg = FinetuneParams(**finetuned.card["params"]["finetune"])
    scratch_cfg = BaselineParams(**scratch.card["params"]["baseline"])
    cs = plan.probe_cs or FreezeParams().probe_cs  # plans written before the probe was solved: the defaults
    manifest = read_manifest(dataset)
    pool = train_in_budget(manifest, dataset)  # "all" means the labels the run has
    val = manifest[manifest["split"] == "val"]
    val_ids = val["id"].to_numpy()[sample_per_class(val["label_idx"], cfg.curve_val_per_class, common.seed)].tolist()
    size = cfg.curve_image_size or common.image_size

    # the transfer side: the selection's weights, its embeddings computed once
    backbone = LoadedModel.selected(plan.model, plan.weights, len(classes), size, seed=common.seed,
                                    classes=classes, device=device)
    features = embed_splits(backbone, dataset, pool["id"].tolist(), val_ids, loop_cfg.eval_batch_size)
    probe = fit_linear_probe(features.train, features.train_labels, features.val, features.val_labels,
                             len(classes), cs)
    set_head(backbone.network, probe)
    references = {"majority_class": majority_accuracy(features.test_labels),
                  "pixel_logistic_regression": pixel_probe_accuracy(dataset, pool["id"].tolist(), val_ids,
                                                                    len(classes), cs)}
    budgets, skipped = drawable_budgets(pool["label_idx"], cfg.budgets)
    setup = Setup(dataset, plan.model, classes, size, loop_cfg, device, None, common.num_workers)
    curve = label_efficiency(cfg, scratch_cfg, setup, features, pool["id"].tolist(), val_ids, budgets,
                             references["majority_class"], cs)

    models = {"finetuned": finetuned, "linear_probe": backbone.to(device), "scratch": scratch}
    shifted = shift_ids(args.current)
    scored = {name: score(model, name, dataset, args.current, shifted, classes, cfg.ece_bins,
                          loop_cfg.eval_batch_size) for name, model in models.items()}
    scores, correct = {n: s for n, (s, _) in scored.items()}, {n: c for n, (_, c) in scored.items()}
    baseline = scratch.card["metrics"]
    problem = training_problem(scores["scratch"]["test"]["accuracy"], scores["scratch"]["classes_predicted"],
                               baseline.get("converged", False), references, scratch_cfg.max_epochs)
    full = full_label_comparison("all labels (test split)", correct["finetuned"]["test"], correct["scratch"]["test"],
                                 problem, cfg, common.seed)
    # the shift set is labelled (the shift stage requires every label to be a training class)
    shift = full_label_comparison("shift set", correct["finetuned"]["shift"], correct["scratch"]["shift"], problem,
                                  cfg, common.seed)
    recommended, why = recommend(full)
    parts = {"curve": curve, "full_labels": full, "shift": shift, "references": references,
             "budgets_skipped": skipped, "image_size": size, "val_images": len(val_ids),
             "recommended_model": recommended, "recommended_reason": why,
             "labels_saved": labels_saved(curve["budgets"], len(pool), full["finetuned_accuracy"],
                                          full["scratch_accuracy"], problem)}

    images, labels = attack_set(dataset, finetuned.preprocessing, cfg.attack_images, common.seed)
    show = list(range(min(cfg.interpret_classes, len(classes))))
    explained = {name: explain(models[name], images, labels, show, cfg.fgsm_epsilons, cfg.ideal_steps,
                               cfg.tv_weight, cfg.adversarial_step, cfg.adversarial_max_steps, common.seed)
                 for name in MODELS}
    learning = {"finetuned": history_curve(args.finetune_history, finetuned.card),
                "scratch": history_curve(args.baseline_history, scratch.card)}
    metrics = assemble_metrics(parts, scores, learning, explained, models, probe.seconds, classes, show)
    announce(metrics["verdict"], metrics["verdict_reason"])
    figures = write_plots(args.plots, metrics, learning, explained, classes, show)
    write_json(args.metrics, metrics)
    kill_point("evaluate.report")
    report = write_report(Path(args.report_dir) / "report.html", metrics, figures)
    return {"verdict": metrics["verdict"], "reason": metrics["verdict_reason"],
            "test_accuracy": metrics["test_accuracy"], "labels_saved": metrics["labels_saved"]["labels_saved"],
            "recommended_model": recommended, "report": str(report), "metrics": str(args.metrics)}
