"""The gate's own HTML page, report.html beside data_docs/: status first, then every check, the
quarantine, the class counts and the profile figure, in one file with no external URL (inline CSS, the PNG
as a data URI), so it reads the same on an air-gapped runner.

It is rendered from the metrics dict written to metrics.json, so the two cannot disagree; the status is
the gate's (by severity), not GX's success flag.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pipeline.common.html import png_data_uri, write_html
from pipeline.validation.gate import check_outcome

__all__ = ["REPORT_PAGE", "status_label", "verdict", "write_report"]
REPORT_PAGE = "report.html"
_EXAMPLES = 3  # offending files shown per check before "all listed"
_QUARANTINE_ROWS = 50  # a mass quarantine stays readable; metrics.json lists every file


def status_label(status: str) -> str:
    """The status as people read it: ``passed_with_warnings`` -> ``passed with warnings``."""
    return status.replace("_", " ")


def verdict(metrics: Mapping[str, Any]) -> str:
    """One sentence on what the status means for the pipeline."""
    if metrics["status"] == "failed":
        return f"critical checks failed: {', '.join(metrics['failed_critical'])}. Training does not start."
    if metrics["status"] == "passed_with_warnings":
        return (f"no critical check failed; warning checks failed: {', '.join(metrics['failed_warning'])}. "
                "Training goes ahead.")
    return "every check passed."


def _cell(observed: Any) -> str:
    """An observed value: one value as is, several (a check of more than one expectation) joined."""
    return "; ".join(map(str, observed)) if isinstance(observed, list) else str(observed)


def write_report(target: str | os.PathLike, metrics: Mapping[str, Any], figure: str | os.PathLike,
                 data_docs: str, title: str) -> Path:
    """Write the page (templates/report.html.j2) atomically.

    Args:
        target: the HTML file to write.
        metrics: the gate's metrics (exactly what metrics.json holds).
        figure: the profile PNG (embedded; skipped when missing).
        data_docs: link to the Data Docs index, relative to ``target``'s folder.
        title: the page title.
    Returns:
        The path.
    """
    return write_html(target, __file__, "report.html.j2",
                      filters={"status_label": status_label, "outcome": check_outcome, "cell": _cell},
                      title=title, m=metrics, verdict=verdict(metrics), figure=png_data_uri(figure),
                      data_docs=data_docs, examples=_EXAMPLES, quarantine_rows=_QUARANTINE_ROWS)
