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
directories and their ``history.csv``, and the baseline stage's ``scratch_runs.json`` (the curve's scratch side
trains there, beside the baseline; the transfer side, probes solved in seconds, is learnt here on the same draws).
Outputs: ``metrics.json`` (DVC metrics; ``weights`` names the weights behind every model;
``recommended_model`` tells promotion which model is better), a plots folder (CSV for ``dvc plots`` +
PNGs), and ``report.html`` (self-contained) in the report folder.
Params: ``common`` and ``evaluate``; the curve's draws (budgets, seeds, val images, input size) come from the
baseline stage's record, the scratch settings from the baseline's card and the loop's from the fine-tune's.
The steps, in order, are pipeline/evaluation/evaluate.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Params
from pipeline.stages.protocol import use_validated, validation_field
from pipeline.evaluation.evaluate import EvaluationInputs, evaluate

__all__ = ["Args", "run"]


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
    scratch_curve: Path = field(metadata={
        "help": "the baseline stage's scratch_runs.json (the curve's draws and scratch runs)"})
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
    evaluation = evaluate(EvaluationInputs(dataset, args.current, args.plan, args.finetuned,
                                           args.finetune_history, args.baseline, args.baseline_history,
                                           args.scratch_curve),
                          params.common, params.evaluate)
    report = evaluation.write(args.metrics, args.plots, args.report_dir)
    metrics = evaluation.metrics
    return {"verdict": metrics["verdict"], "reason": metrics["verdict_reason"],
            "test_accuracy": metrics["test_accuracy"], "labels_saved": metrics["labels_saved"]["labels_saved"],
            "recommended_model": metrics["recommended_model"], "report": str(report), "metrics": str(args.metrics)}
