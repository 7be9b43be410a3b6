"""Stage ``evaluate``: transfer vs scratch on the user's own data, honestly.

Scores the fine-tuned model, a linear probe (trained here on the selection's weights, by the engine)
and the scratch baseline on the test split and the domain-shift set (accuracy, macro-F1, per-class
P/R/F1, confusion, calibration error, robustness per corruption and severity, cost); trains the
label-efficiency curve (transfer and scratch at each budget x seed, same subsets and steps) and from
it decides the verdict (pipeline/evaluation/verdict.py), "labels saved" and, from the learning
curves, "time saved"; shows what the models learned (ideal inputs, adversarial pairs, FGSM).
Inputs: the dataset, the domain-shift set, ``freeze_plan.json``, the fine-tuned and baseline model
directories and their ``history.csv``.
Outputs: ``metrics.json`` (DVC metrics; ``weights`` names the weights behind every model), a plots
folder (CSV for ``dvc plots`` + PNGs), and ``report.html`` (self-contained) in the report folder.
Params: ``common`` and ``evaluate``; the loop settings and learning rates of the extra runs come from
the fine-tuned and baseline model cards, so that they match the models being compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import FinetuneParams, Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget, use_validated, validation_field
from pipeline.evaluation.assess import attack_set, explain, score, shift_sample
from pipeline.evaluation.comparison import (MODELS, assemble_metrics, history_curve, label_efficiency,
                                            probe_settings, verdict_of)
from pipeline.evaluation.outputs import write_plots
from pipeline.evaluation.report import write_report
from pipeline.evaluation.verdict import announce
from pipeline.freezing.plan import load_plan
from pipeline.models import LoadedModel
from pipeline.training.recipes import Setup, train_one

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the evaluate stage."""

    dataset: Path = field(metadata={"help": "dataset directory (test split scored, train split for the curve)"})
    current: Path = field(metadata={"help": "domain-shift set written by `tlops shift`"})
    plan: Path = field(metadata={"help": "freeze_plan.json (architecture, weights, linear-probe phase)"})
    finetuned: Path = field(metadata={"help": "fine-tuned model directory"})
    finetune_history: Path = field(metadata={"help": "the fine-tune's history.csv (learning curve)"})
    baseline: Path = field(metadata={"help": "scratch baseline model directory"})
    baseline_history: Path = field(metadata={"help": "the baseline's history.csv (learning curve)"})
    metrics: Path = field(metadata={"help": "metrics.json to write (DVC metrics)"})
    plots: Path = field(metadata={"help": "folder for plot data (CSV) and PNGs"})
    report_dir: Path = field(metadata={"help": "folder for report.html"})
    validation: Path | None = validation_field()


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
    finetuned, scratch = LoadedModel.load(args.finetuned, device), LoadedModel.load(args.baseline, device)
    loop_cfg = FinetuneParams(**finetuned.card["params"]["finetune"])
    probe_epochs, probe_lr = probe_settings(plan)
    budget = train_in_budget(read_manifest(args.dataset), args.dataset)["id"].tolist()
    # every run here is throwaway (none is resumed or kept), so none writes checkpoints; the transfer side
    # starts from the weights the selection chose
    setup = Setup(Path(args.dataset), plan.model, classes, common.image_size, loop_cfg, device, None,
                  common.num_workers, weights=plan.weights, hub_dir=plan.weights.get("hub_dir"))
    probe = train_one(setup, None, True, common.seed, budget, epochs=probe_epochs, lr=probe_lr, score_test=False)
    curve = label_efficiency(cfg, common.seed, setup, plan, probe_lr, scratch.card["params"]["baseline"]["lr"])
    models = {"finetuned": finetuned, "linear_probe": probe.model.to(device), "scratch": scratch}
    shift_ids = shift_sample(args.current, cfg.shift_per_cell, common.seed)
    batch = loop_cfg.eval_batch_size
    scores = {name: score(model, name, args.dataset, args.current, shift_ids, classes, cfg.ece_bins, batch)
              for name, model in models.items()}
    images, labels = attack_set(args.dataset, finetuned.preprocessing, cfg.attack_images, common.seed)
    show = list(range(min(cfg.interpret_classes, len(classes))))
    explained = {name: explain(models[name], images, labels, show, cfg.fgsm_epsilons, cfg.ideal_steps,
                               cfg.tv_weight, cfg.adversarial_step, cfg.adversarial_max_steps, common.seed)
                 for name in MODELS}
    learning = {"finetuned": history_curve(args.finetune_history, finetuned.card),
                "scratch": history_curve(args.baseline_history, scratch.card)}
    verdict, reason = verdict_of(curve["curve"])
    announce(verdict, reason)
    metrics = assemble_metrics(verdict, reason, scores, curve, learning, explained, models, probe, classes, show)
    figures = write_plots(args.plots, metrics, learning, explained, classes, show)
    write_json(args.metrics, metrics)
    report = write_report(Path(args.report_dir) / "report.html", metrics, figures)
    return {"verdict": verdict, "reason": reason, "test_accuracy": metrics["test_accuracy"],
            "labels_saved": curve["labels_saved"]["labels_saved"], "report": str(report), "metrics": str(args.metrics)}
