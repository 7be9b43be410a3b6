"""What people review after a drift check: report.html (the calibrated decision first, the moved
descriptors in words, per-group tests, the most unlike images, the embedded Evidently report), the
Evidently report itself, and a snapshot in the shared Evidently Workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.html import png_data_uri, write_html
from pipeline.config import DriftParams
from pipeline.data.shards import open_image
from pipeline.drift.evidently import build_snapshot, report_frame, save_snapshot
from pipeline.drift.inputs import SetOutputs
from pipeline.drift.outliers import most_unlike, save_thumbnails
from pipeline.drift.workspace import add_snapshot

__all__ = ["write_reports", "write_review_page"]


def write_reports(current: SetOutputs, summary: dict[str, Any], report_dir: Path, workspace: Path,
                  cfg: DriftParams) -> dict[str, Any]:
    """Write outliers.png, the Evidently report (HTML + JSON), report.html, and the Workspace snapshot.

    Args:
        current: the current set's outputs.
        summary: from :func:`pipeline.drift.analysis.analyse` (its private ``_scores``, ``_pca`` and
            ``_reference`` entries are consumed here).
        report_dir: the folder of the reports.
        workspace: the Evidently Workspace folder (shared by every run).
        cfg: ``params.drift``.
    Returns:
        ``{"reports": {name: path}, "workspace": {...}}``.
    """
    scores, (ref_pca, cur_pca), reference = summary.pop("_scores"), summary.pop("_pca"), summary.pop("_reference")
    out = Path(report_dir)
    reports = {"html": str(out / "report.html"), "evidently_html": str(out / "evidently.html"),
               "evidently_json": str(out / "evidently.json"), "outliers": str(out / "outliers.png")}
    top = most_unlike(scores, cfg.top_outliers)
    summary["most_unlike"] = [{"id": current.manifest["id"].iloc[i], "knn_distance": float(scores[i]),
                               **current.origin(i)} for i in top]
    thumbnails = _thumbnails(current, top, scores, Path(reports["outliers"])) if len(top) else None
    descriptor_columns = [s["descriptor"] for s in summary["descriptors"]]
    frames = [report_frame(s.descriptors[descriptor_columns], s.probs, pca, s.classes, s.labels())
              for s, pca in ((reference, ref_pca), (current, cur_pca))]
    metadata = {"drift_detected": str(summary["drift_detected"]), "p_value": f"{summary['p_value']:.4g}",
                **{f"p_{name}": f"{p:.4g}" for name, p in summary["p_values"].items()},
                "descriptors_moved": ", ".join(summary["descriptors_moved"]) or "none",
                "current": str(current.dataset), "n_current": str(summary["n_current"])}
    tags = ["drift" if summary["drift_detected"] else "no drift", *summary["descriptors_moved"]]
    snapshot = build_snapshot(*frames, descriptor_columns, metadata, tags, name=f"drift {Path(current.dataset).name}",
                              classes=current.classes)
    summary["evidently"] = save_snapshot(snapshot, Path(reports["evidently_html"]), Path(reports["evidently_json"]))
    write_review_page(Path(reports["html"]), summary, thumbnails, Path(reports["evidently_html"]))
    return {"reports": reports, "workspace": add_snapshot(workspace, snapshot)}


def _thumbnails(current: SetOutputs, top: np.ndarray, scores: np.ndarray, target: Path) -> Path:
    images, captions = [], []
    for i in top:
        row = current.manifest.iloc[i]
        images.append(open_image(current.dataset, row["id"]))
        origin = current.origin(i)
        where = origin["group"] if origin else str(row["id"])[:10]
        captions.append(f"{where}\ndistance {scores[i]:.2f}")
    return save_thumbnails(images, captions, target, title="Current images most unlike the reference "
                                                            "(distance to the nearest reference embeddings)")


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_review_page(target: Path, summary: dict[str, Any], thumbnails: Path | None, evidently_html: Path) -> Path:
    """Write report.html (templates/review.html.j2): the calibrated decision first, then words, tables,
    thumbnails, Evidently.

    Args:
        target: the page to write (atomically).
        summary: the stage's drift.json content.
        thumbnails: PNG sheet of the most unlike current images (embedded), or None.
        evidently_html: the Evidently HTML, embedded by a relative link (same folder).
    Returns:
        The path written.
    """
    tests = [{"test": name, "p_value": t["p_value"], "effect": t["effect_size"], "effect_name": t["effect_name"],
              "detectable_share": t["details"].get("detectable_share"), "n_reference": t["n_reference"],
              "n_current": t["n_current"]} for name, t in summary["tests"].items()]
    return write_html(target, __file__, "review.html.j2", filters={"cell": _cell}, s=summary, tests=tests,
                      thumbnails=png_data_uri(thumbnails), evidently=evidently_html.name)
