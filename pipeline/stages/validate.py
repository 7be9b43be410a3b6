"""Stage `validate`: decode and profile every image, then run the Great Expectations gate on the table.

Inputs: ``--dataset`` (a dataset directory written by ingest: manifest.parquet, classes.json, shards/).
Outputs: ``--image-profile`` (profile.parquet: one row per image with its descriptors, ``quarantined`` and the
leak/conflict partner columns; the drift stage reuses the descriptors), ``--metrics`` (gate outcome:
per check severity, passed, observed value, up to 20 offending files; the quarantine list; class
counts, ``status``: passed | passed_with_warnings | failed), ``--report-dir`` (report.html: the gate's own
self-contained page; GX project under gx/, Data Docs HTML under data_docs/ made readable offline, profile.png).
Params: ``common`` and ``validate`` (thresholds, severities, corrupt-file policy, pixel limit).
Exits non-zero (GateFailed, a ValueError naming each failed critical check and example files) when the gate fails,
so `dvc repro` and the flow stop before training. Nothing is dropped silently: quarantined images
stay in the profile, flagged, and are listed in the metrics.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.errors import GateFailed
from pipeline.common.io import atomic_dir, atomic_path, write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.shards import read_classes
from pipeline.validation.checks import class_table, with_count_columns
from pipeline.validation.data_docs import make_offline
from pipeline.validation.dataset import profile_dataset
from pipeline.validation.figures import plot_profile
from pipeline.validation.gate import gate_error, gate_metrics, text_summary
from pipeline.validation.report import REPORT_PAGE, write_report
from pipeline.validation.suite import DOCS_DIR, run_suite

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the validate stage (defaults come from its cmd in dvc.yaml)."""

    dataset: Path = field(metadata={"help": "dataset directory to check (written by tlops ingest)"})
    image_profile: Path = field(metadata={"help": "image profile table to write (parquet, one row per image)"})
    metrics: Path = field(metadata={"help": "gate outcome JSON: per-check results, quarantine list"})
    report_dir: Path = field(metadata={"help": "folder for report.html, the GX project, Data Docs and profile.png"})


def run(params: Params, args: Args) -> dict:
    """Profile every image of the dataset and run the validation gate.

    Args:
        params: validated params (reads ``common`` and ``validate``).
        args: input and output paths.
    Returns:
        Summary: passed, status, images, quarantined, failed warning checks, report and Data Docs paths.
    Raises:
        GateFailed: the gate failed (each failed critical check is named with example files); the
            outputs are written first and stand.
    """
    cfg = params.validate_
    classes = cfg.expected_classes or read_classes(args.dataset)
    started = time.perf_counter()
    profile = profile_dataset(args.dataset, cfg)
    profiled = time.perf_counter()
    counts = class_table(profile, classes)
    with atomic_dir(args.report_dir) as tmp:
        checks = run_suite(with_count_columns(profile, counts), cfg, classes, tmp)
        metrics = gate_metrics(checks, profile, counts, str(args.report_dir / DOCS_DIR / "index.html"),
                               str(args.report_dir / REPORT_PAGE))
        plot_profile(profile, counts, tmp / "profile.png")
        write_report(tmp / REPORT_PAGE, metrics, tmp / "profile.png", f"{DOCS_DIR}/index.html",
                     title=f"Validation gate: {args.dataset}")
        make_offline(tmp / DOCS_DIR, metrics)
    log.info("profile %.1fs (%.0f img/s), gate %.1fs", profiled - started,
             len(profile) / max(profiled - started, 1e-9), time.perf_counter() - profiled)
    with atomic_path(args.image_profile, suffix=".parquet") as tmp:
        profile.to_parquet(tmp, index=False)
    write_json(args.metrics, metrics)
    print(text_summary(metrics), file=sys.stderr)
    if not metrics["passed"]:
        raise GateFailed(gate_error(metrics, str(args.metrics)))
    return {key: metrics[key]
            for key in ("passed", "status", "images", "quarantined", "failed_warning", "report", "data_docs")}
