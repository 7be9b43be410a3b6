"""The whole evaluation of a run, as the evaluate stage runs it: transfer against scratch, then its files.

:func:`evaluate` takes the run's inputs (:class:`EvaluationInputs`) and goes through named steps in a
fixed order (the seeded runs depend on it): load the models and the label pool; the transfer side (the
selection's weights, embeddings computed once, the linear probe solved on them); the trivial references;
the label-efficiency curve; the scores of the three models; the paired comparisons and the recommended
model; the explanations; the metrics (pipeline/evaluation/comparison.py ``assemble_metrics``) and the
verdict. :meth:`Evaluation.write` writes metrics.json, the plots and the HTML report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pipeline.common.device import select_device
from pipeline.common.faults import kill_point
from pipeline.common.io import read_json, write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import BaselineParams, CommonParams, EvaluateParams, FreezeParams, TrainParams
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.evaluation.assess import attack_set, explain, scorable_shift, score
from pipeline.evaluation.comparison import (MODELS, Features, assemble_metrics, embed_splits, full_label_comparison,
                                            history_curve, label_efficiency, recommend)
from pipeline.evaluation.label_efficiency import labels_saved
from pipeline.evaluation.outputs import write_plots
from pipeline.evaluation.references import majority_accuracy, pixel_probe_accuracy, training_problem
from pipeline.evaluation.report import write_report
from pipeline.evaluation.verdict import announce
from pipeline.freezing.plan import FreezePlan, load_plan
from pipeline.models import LoadedModel
from pipeline.training.probe import fit_linear_probe, set_head

__all__ = ["EvaluationInputs", "Evaluation", "evaluate"]
log = get_logger(__name__)


@dataclass(frozen=True)
class EvaluationInputs:
    """What a run's evaluation reads: the dataset, the domain-shift set, the freeze plan, and the fine-tuned and
    scratch baseline models with their histories."""

    dataset: os.PathLike  # test split scored, train split for the curve (a GatedDataset: without the quarantine)
    current: Path  # the domain-shift set (`tlops shift`)
    plan: Path  # freeze_plan.json: architecture, weights, the probe's penalties
    finetuned: Path
    finetune_history: Path
    baseline: Path
    baseline_history: Path
    scratch_curve: Path  # the baseline stage's scratch_runs.json: the curve's draws and their scratch runs


@dataclass
class Evaluation:
    """An evaluation's result: the metrics (what metrics.json holds) and what the plots draw besides."""

    metrics: dict[str, Any]
    learning: dict[str, list[dict]]  # model -> learning-curve points
    explained: dict[str, dict]  # model -> ideal inputs, adversarial pairs, FGSM
    classes: list[str]
    show: list[int]  # the visualised class indices

    def write(self, metrics: Path, plots: Path, report_dir: Path) -> Path:
        """Write the plots (CSV + PNGs), ``metrics`` (metrics.json) and ``report_dir``/report.html; returns the
        report's path."""
        figures = write_plots(plots, self.metrics, self.learning, self.explained, self.classes, self.show)
        write_json(metrics, self.metrics)
        kill_point("evaluate.report")
        return write_report(Path(report_dir) / "report.html", self.metrics, figures)


@dataclass
class _Context:
    """The evaluation's settings and what every step reads: the models, their recipes, the label pool."""

    inputs: EvaluationInputs
    common: CommonParams
    cfg: EvaluateParams
    device: torch.device
    plan: FreezePlan
    classes: list[str]
    finetuned: LoadedModel
    scratch: LoadedModel
    loop_cfg: TrainParams  # the fine-tune's loop settings (from its card)
    scratch_cfg: BaselineParams  # the baseline's settings (from its card)
    cs: list[float]  # the probe's penalties
    pool: pd.DataFrame  # the train rows inside the label budget ("all labels")
    scratch_curve: dict  # the baseline stage's curve draws and their scratch runs
    val_ids: list[str]  # the val images the curve's runs choose on (the baseline stage's)
    size: int  # the curve's image size (the baseline stage's)

    @property
    def pool_ids(self) -> list[str]:
        return self.pool["id"].tolist()


def evaluate(inputs: EvaluationInputs, common: CommonParams, cfg: EvaluateParams) -> Evaluation:
    """Compare transfer against scratch and decide the verdict (the module docstring's steps).

    Args:
        inputs: the run's inputs.
        common: the ``common`` params (seed, device, image size, workers).
        cfg: the ``evaluate`` params.
    Returns:
        The metrics, with what the plots need.
    """
    seed_everything(common.seed)
    ctx = _load(inputs, common, cfg)
    backbone, features, probe_seconds = _transfer_side(ctx)
    references = {"majority_class": majority_accuracy(features.test_labels),
                  "pixel_logistic_regression": pixel_probe_accuracy(inputs.dataset, ctx.pool_ids, ctx.val_ids,
                                                                    len(ctx.classes), ctx.cs)}
    curve, skipped = _curve(ctx, features)
    models = {"finetuned": ctx.finetuned, "linear_probe": backbone, "scratch": ctx.scratch}
    scores, correct, unscored = _scores(ctx, models)
    parts = {**_comparisons(ctx, scores, correct, references, curve), "curve": curve, "references": references,
             "budgets_skipped": skipped, "image_size": ctx.size, "val_images": len(ctx.val_ids),
             "shift_unscored": unscored}
    explained, show = _explanations(ctx, models)
    learning = {"finetuned": history_curve(inputs.finetune_history, ctx.finetuned.card),
                "scratch": history_curve(inputs.baseline_history, ctx.scratch.card)}
    metrics = assemble_metrics(parts, scores, learning, explained, models, probe_seconds, ctx.classes, show)
    announce(metrics["verdict"], metrics["verdict_reason"])
    return Evaluation(metrics, learning, explained, ctx.classes, show)


def _load(inputs: EvaluationInputs, common: CommonParams, cfg: EvaluateParams) -> _Context:
    """The models, the recipes they were trained with (from their cards), the label pool and the baseline stage's
    draws."""
    device = select_device(common.device)
    plan, classes = load_plan(inputs.plan), read_classes(inputs.dataset)
    finetuned, scratch = LoadedModel.load(inputs.finetuned, device), LoadedModel.load(inputs.baseline, device)
    manifest = read_manifest(inputs.dataset)
    pool = train_in_budget(manifest, inputs.dataset)  # "all" means the labels the run has
    curve = read_json(inputs.scratch_curve)
    return _Context(inputs, common, cfg, device, plan, classes, finetuned, scratch,
                    loop_cfg=TrainParams(**finetuned.card["params"]["train"]),
                    scratch_cfg=BaselineParams(**scratch.card["params"]["baseline"]),
                    cs=plan.probe_cs or FreezeParams().probe_cs,  # plans written before the probe was solved
                    pool=pool, scratch_curve=curve, val_ids=curve["val_ids"], size=curve["image_size"])


def _transfer_side(ctx: _Context) -> tuple[LoadedModel, Features, float]:
    """The selection's weights with the linear probe solved on their embeddings (computed once) as the head;
    returns that model, the embeddings and the probe's fit seconds."""
    backbone = LoadedModel.selected(ctx.plan.model, ctx.plan.weights, len(ctx.classes), ctx.size,
                                    seed=ctx.common.seed, classes=ctx.classes, device=ctx.device)
    features = embed_splits(backbone, ctx.inputs.dataset, ctx.pool_ids, ctx.val_ids, ctx.loop_cfg.eval_batch_size)
    probe = fit_linear_probe(features.train, features.train_labels, features.val, features.val_labels,
                             len(ctx.classes), ctx.cs)
    set_head(backbone.network, probe)
    return backbone.to(ctx.device), features, probe.seconds


def _curve(ctx: _Context, features: Features) -> tuple[dict, list]:
    """The label-efficiency curve: the transfer side on the baseline stage's curve draws beside their scratch runs;
    returns it and the budgets the pool could not give."""
    curve = label_efficiency(ctx.scratch_curve, ctx.inputs.scratch_curve, features, ctx.pool_ids, len(ctx.classes),
                             ctx.cs, ctx.cfg.confidence, ctx.cfg.min_gain)
    return curve, ctx.scratch_curve["skipped"]


def _scores(ctx: _Context, models: dict[str, LoadedModel]) -> tuple[dict, dict, str | None]:
    """Each model scored on the test split and the shift set; returns (scores, per-image correctness, why the shift
    set was not scored or None)."""
    shifted, unscored = scorable_shift(ctx.inputs.current)
    if unscored:
        log.warning("the domain-shift set is not scored: %s", unscored)
    scored = {name: score(model, name, ctx.inputs.dataset, ctx.inputs.current, shifted,
                          ctx.classes, ctx.cfg.ece_bins, ctx.loop_cfg.eval_batch_size)
              for name, model in models.items()}
    return {n: s for n, (s, _) in scored.items()}, {n: c for n, (_, c) in scored.items()}, unscored


def _comparisons(ctx: _Context, scores: dict, correct: dict, references: dict[str, float],
                 curve: dict) -> dict[str, Any]:
    """The fine-tuned model against the scratch baseline with all labels and on the shift set (paired, against
    what may be wrong with the scratch training), the recommended model and the labels saved."""
    problem = training_problem(scores["scratch"]["test"]["accuracy"], scores["scratch"]["classes_predicted"],
                               ctx.scratch.card["metrics"].get("converged", False), references,
                               ctx.scratch_cfg.max_epochs)
    seed = ctx.common.seed
    full = full_label_comparison("all labels (test split)", correct["finetuned"]["test"], correct["scratch"]["test"],
                                 problem, ctx.cfg, seed)
    # a labelled shift set's labels are training classes (the shift stage requires it); an unlabelled one is not
    # compared (the verdict rests on the other comparisons)
    shift = (full_label_comparison("shift set", correct["finetuned"]["shift"], correct["scratch"]["shift"], problem,
                                   ctx.cfg, seed) if correct["finetuned"]["shift"] is not None else None)
    recommended, why = recommend(full)
    return {"full_labels": full, "shift": shift, "recommended_model": recommended, "recommended_reason": why,
            "labels_saved": labels_saved(curve["budgets"], len(ctx.pool), full["finetuned_accuracy"],
                                         full["scratch_accuracy"], problem)}


def _explanations(ctx: _Context, models: dict[str, LoadedModel]) -> tuple[dict[str, dict], list[int]]:
    """What each model learned (ideal inputs, adversarial pairs, FGSM) on the same attack images; returns them
    and the visualised class indices."""
    cfg, seed = ctx.cfg, ctx.common.seed
    images, labels = attack_set(ctx.inputs.dataset, ctx.finetuned.preprocessing, cfg.attack_images, seed)
    show = list(range(min(cfg.interpret_classes, len(ctx.classes))))
    explained = {name: explain(models[name], images, labels, show, cfg.fgsm_epsilons, cfg.ideal_steps, cfg.tv_weight,
                               cfg.adversarial_step, cfg.adversarial_max_steps, seed)
                 for name in MODELS}
    return explained, show
