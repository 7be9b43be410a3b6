"""Stage `drift`: is the current set drifting away from the reference, and how?

Inputs: ``--dataset`` (reference images: its ``drift.reference_split``), ``--image-profile`` (the validation
profile of that dataset: its per-image descriptors), ``--current`` (the current set: the domain-shift
set by default, or any newly ingested batch), ``--model`` (the fine-tuned model directory).
Outputs: ``--drift`` (drift.json: drift_detected, p-values, effect sizes, moved descriptors, report
paths; what the flow reads to trigger retraining), ``--report-dir`` (report.html to review,
evidently.html + evidently.json, outliers.png), ``--workspace`` (Evidently Workspace: one snapshot per
run is added; it persists between runs and `tlops drift-ui` serves it).
Params: ``common`` and ``drift``.
The decision is the calibrated test of :mod:`pipeline.drift.detector`, never Evidently's own flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params
from pipeline.drift.analysis import analyse
from pipeline.drift.inputs import current_descriptors, reference_descriptors, set_outputs
from pipeline.drift.review import write_reports
from pipeline.models import LoadedModel
from pipeline.project import main_checkout
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the drift stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "reference dataset directory (its drift.reference_split)"})
    image_profile: Path = field(metadata={"help": "validation profile of the reference dataset (profile.parquet)"})
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
    dataset = use_validated(args.dataset, args.validation)
    cfg = params.drift
    seed_everything(params.common.seed)
    started = time.perf_counter()
    model = LoadedModel.load(args.model, select_device(params.common.device))
    reference = set_outputs(dataset, cfg.reference_split, model, cfg, reference_descriptors(args.image_profile))
    current = set_outputs(args.current, None, model, cfg, current_descriptors(args.current, params.common))
    summary = analyse(reference, current, cfg, params.common.seed)
    summary.update(reference=f"{dataset} ({cfg.reference_split})", current=str(args.current),
                   model=model.fingerprint())
    for warning in summary["warnings"]:
        log.warning("drift: %s", warning)
    # one Workspace for all runs: relative paths resolve against the main checkout, as the registry does
    workspace = main_checkout(Path.cwd()) / args.workspace
    paths = write_reports(current, summary, args.report_dir, workspace, cfg)
    summary.update(reports=paths["reports"], workspace=paths["workspace"],
                   seconds=round(time.perf_counter() - started, 1))
    write_json(args.drift, summary)
    log.info("drift %s (p = %.3g); descriptors moved: %s; report %s", summary["drift_detected"],
             summary["p_value"], ", ".join(summary["descriptors_moved"]) or "none", paths["reports"]["html"])
    return {key: summary[key] for key in ("drift_detected", "p_value", "p_values", "descriptors_moved", "model",
                                          "accuracy_current", "n_reference", "n_current", "detectable", "warnings",
                                          "reports")}


