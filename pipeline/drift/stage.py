"""Stage `drift`: is the current set drifting away from the reference, and how?

Inputs: ``--dataset`` (reference images: its ``drift.reference_split``), ``--profile`` (the validation
profile of that dataset: its per-image descriptors), ``--current`` (the current set: the domain-shift
set by default, or any newly ingested batch), ``--model`` (the fine-tuned model directory).
Outputs: ``--drift`` (drift.json: drift_detected, p-values, effect sizes, moved descriptors, report
paths; what the flow reads to trigger retraining), ``--report-dir`` (report.html to review,
evidently.html + evidently.json, outliers.png), ``--workspace`` (Evidently Workspace: one snapshot per
run is added; it persists between runs and `tlops drift-ui` serves it).
Params: ``common`` and ``drift``.
The decision is the calibrated test of :mod:`pipeline.drift.tests`, never Evidently's own flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import DriftParams, Params
from pipeline.data.shards import use_validated, validation_field
from pipeline.project import main_checkout
from pipeline.drift.describe import describe_shifts, moved_words
from pipeline.drift.inputs import SetOutputs, current_descriptors, load_model, reference_descriptors, set_outputs
from pipeline.drift.outliers import domain_classifier_scores, knn_distances, most_unlike, save_thumbnails
from pipeline.drift.tests import detect, pca_project

__all__ = ["Args", "run"]
log = get_logger(__name__)
_GROUP_COLUMNS = ("corruption", "severity")
_MIN_GROUP = 10  # smaller groups are listed but not tested: too few rows for a meaningful p-value


@dataclass
class Args:
    """Paths of the drift stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "reference dataset directory (its drift.reference_split)"})
    profile: Path = field(metadata={"help": "validation profile of the reference dataset (profile.parquet)"})
    current: Path = field(metadata={"help": "current dataset directory (domain-shift set or a new batch)"})
    model: Path = field(metadata={"help": "fine-tuned model directory (model.pt + card.json)"})
    drift: Path = field(metadata={"help": "drift.json to write (decision, p-values, effect sizes, report paths)"})
    report_dir: Path = field(metadata={"help": "folder for report.html, evidently.html/.json, outliers.png"})
    workspace: Path = field(metadata={"help": "Evidently Workspace folder (relative to the main checkout, shared "
                                              "by all runs); this run's snapshot is added"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict:
    """Compare the current set with the reference; write drift.json, the reports and a Workspace snapshot.

    Args:
        params: validated params (reads ``common`` and ``drift``).
        args: input and output paths.
    Returns:
        Summary: drift_detected, p-value, descriptors moved, accuracy, report paths.
    """
    use_validated(args.dataset, args.validation)
    cfg = params.drift
    seed_everything(params.common.seed)
    started = time.perf_counter()
    inference = load_model(args.model, params.common)
    reference = set_outputs(args.dataset, cfg.reference_split, inference, cfg, reference_descriptors(args.profile))
    current = set_outputs(args.current, None, inference, cfg, current_descriptors(args.current, params.common))
    summary = analyse(reference, current, cfg, params.common.seed)
    summary.update(reference=f"{args.dataset} ({cfg.reference_split})", current=str(args.current))
    paths = write_reports(reference, current, summary, args, cfg)
    summary.update(reports=paths["reports"], workspace=paths["workspace"],
                   seconds=round(time.perf_counter() - started, 1))
    write_json(args.drift, summary)
    log.info("drift %s (p = %.3g); descriptors moved: %s; report %s", summary["drift_detected"],
             summary["p_value"], ", ".join(summary["descriptors_moved"]) or "none", paths["reports"]["html"])
    return {key: summary[key] for key in ("drift_detected", "p_value", "p_values", "descriptors_moved",
                                          "accuracy_current", "n_reference", "n_current", "reports")}


def analyse(reference: SetOutputs, current: SetOutputs, cfg: DriftParams, seed: int) -> dict[str, Any]:
    """The calibrated decision, descriptor shifts, accuracy, domain-classifier scores and per-group tests.

    Args:
        reference: reference embeddings, softmax, descriptors and manifest.
        current: the same for the current set.
        cfg: ``params.drift``.
        seed: ``common.seed``.
    Returns:
        The drift.json content (without paths), plus ``_scores`` (each current row's distance to its
        nearest reference embeddings) and ``_pca`` (the reduced embeddings) for the reports.
    """
    decision = _decide(reference, current, cfg, seed)
    shifts = describe_shifts(reference.descriptors, current.descriptors, cfg.alpha, cfg.min_effect)
    ref_pca, cur_pca = pca_project(reference.embeddings, current.embeddings, cfg.pca_dims)
    _, auc = domain_classifier_scores(ref_pca, cur_pca, seed=seed)
    # Ranking by distance to the nearest reference images needs no training, so it stays sound on
    # small sets where a domain classifier's per-image scores are noisy; the classifier's AUC is kept
    # as an effect size.
    scores = knn_distances(ref_pca, cur_pca)
    tests = decision.to_dict()["tests"]
    return {
        "drift_detected": decision.drift_detected, "p_value": decision.p_value, "alpha": decision.alpha,
        "rule": decision.rule, "tests": tests,
        "p_values": {name: t["p_value"] for name, t in tests.items()},
        "effect_sizes": {name: {t["effect_name"]: t["effect_size"]} for name, t in tests.items()}
        | {"domain_classifier_auc": auc},
        "descriptors_moved": moved_words(shifts), "descriptors": [s.to_dict() for s in shifts],
        "accuracy_reference": reference.accuracy(), "accuracy_current": current.accuracy(),
        "domain_classifier_auc": auc, "n_reference": len(reference.manifest), "n_current": len(current.manifest),
        "groups": _group_tests(reference, current, cfg, seed) if cfg.per_group else [],
        "_scores": scores, "_pca": (ref_pca, cur_pca),
    }


def _decide(reference: SetOutputs, current: SetOutputs, cfg: DriftParams, seed: int, rows: Any = None) -> Any:
    cur_emb = current.embeddings if rows is None else current.embeddings[rows]
    cur_probs = current.probs if rows is None else current.probs[rows]
    return detect(reference.embeddings, cur_emb, reference.probs, cur_probs, alpha=cfg.alpha,
                  permutations=cfg.permutations, pca_dims=cfg.pca_dims, max_samples=cfg.max_samples, seed=seed)


def _group_tests(reference: SetOutputs, current: SetOutputs, cfg: DriftParams, seed: int) -> list[dict[str, Any]]:
    """Test each corruption x severity group on its own, at that group's size."""
    if not all(c in current.manifest.columns for c in _GROUP_COLUMNS):
        return []
    groups = []
    for (corruption, severity), rows in current.manifest.groupby(list(_GROUP_COLUMNS), sort=True).indices.items():
        entry = {"corruption": corruption, "severity": int(severity), "n": len(rows),
                 "accuracy": current.accuracy(rows)}
        if len(rows) >= _MIN_GROUP:
            decision = _decide(reference, current, cfg, seed, rows)
            entry.update(drift_detected=decision.drift_detected, p_value=decision.p_value)
        groups.append(entry)
    return groups


def write_reports(reference: SetOutputs, current: SetOutputs, summary: dict[str, Any], args: Args,
                  cfg: DriftParams) -> dict[str, Any]:
    """Write outliers.png, the Evidently report (HTML + JSON), report.html, and the Workspace snapshot.

    Args:
        reference, current: the two sets' outputs.
        summary: from :func:`analyse` (its private ``_scores``/``_pca`` entries are consumed here).
        args: the stage paths.
        cfg: ``params.drift``.
    Returns:
        ``{"reports": {name: path}, "workspace": {...}}``.
    """
    from pipeline.drift.report import build_snapshot, report_frame, save_snapshot, write_review_page
    from pipeline.drift.workspace import add_snapshot

    scores, (ref_pca, cur_pca) = summary.pop("_scores"), summary.pop("_pca")
    out = args.report_dir
    reports = {"html": str(out / "report.html"), "evidently_html": str(out / "evidently.html"),
               "evidently_json": str(out / "evidently.json"), "outliers": str(out / "outliers.png")}
    top = most_unlike(scores, cfg.top_outliers)
    summary["most_unlike"] = [{"id": current.manifest["id"].iloc[i], "knn_distance": float(scores[i]),
                               **current.origin(i)} for i in top]
    thumbnails = _thumbnails(current, top, scores, Path(reports["outliers"])) if len(top) else None
    # Constant descriptors (e.g. width on a fixed-size set) carry no drift and break Evidently's correlations.
    descriptor_columns = [s["descriptor"] for s in summary["descriptors"]
                          if pd.concat([reference.descriptors[s["descriptor"]],
                                        current.descriptors[s["descriptor"]]]).nunique() > 1]
    frames = [report_frame(s.descriptors[descriptor_columns], s.probs, pca, s.classes, s.labels())
              for s, pca in ((reference, ref_pca), (current, cur_pca))]
    metadata = {"drift_detected": str(summary["drift_detected"]), "p_value": f"{summary['p_value']:.4g}",
                **{f"p_{name}": f"{p:.4g}" for name, p in summary["p_values"].items()},
                "descriptors_moved": ", ".join(summary["descriptors_moved"]) or "none",
                "current": str(args.current), "n_current": str(summary["n_current"])}
    tags = ["drift" if summary["drift_detected"] else "no drift", *summary["descriptors_moved"]]
    snapshot = build_snapshot(*frames, descriptor_columns, metadata, tags, name=f"drift {args.current.name}")
    summary["evidently"] = save_snapshot(snapshot, Path(reports["evidently_html"]), Path(reports["evidently_json"]))
    write_review_page(Path(reports["html"]), summary, thumbnails, Path(reports["evidently_html"]))
    # one Workspace for all runs: relative paths resolve against the main checkout, as the registry does
    workspace = main_checkout(Path.cwd()) / args.workspace
    return {"reports": reports, "workspace": add_snapshot(workspace, snapshot)}


def _thumbnails(current: SetOutputs, top: np.ndarray, scores: np.ndarray, target: Path) -> Path:
    from pipeline.data.shards import open_image

    images, captions = [], []
    for i in top:
        row = current.manifest.iloc[i]
        images.append(open_image(current.dataset, row["id"]))
        origin = current.origin(i)
        where = f"{origin['corruption']} {origin['severity']}" if origin else str(row["id"])[:10]
        captions.append(f"{where}\ndistance {scores[i]:.2f}")
    return save_thumbnails(images, captions, target, title="Current images most unlike the reference "
                                                            "(distance to the nearest reference embeddings)")
