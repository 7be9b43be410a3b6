"""What the gate tells people: metrics.json content, the short text summary, the failure message."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.validation.suite import CheckResult

__all__ = ["gate_metrics", "gate_status", "check_outcome", "failed", "text_summary", "gate_error"]
_EXAMPLES = 3  # offending files named per check in the one-line error
_MARKS = {"pass": "ok  ", "warn": "warn", "fail": "FAIL"}


def gate_metrics(checks: list[CheckResult], profile: pd.DataFrame, classes: pd.DataFrame,
                 data_docs: str, report: str) -> dict[str, Any]:
    """The full gate outcome for metrics.json.

    Args:
        checks: the results of every check.
        profile: the profile table (with ``quarantined``).
        classes: the class table.
        data_docs: path of the Data Docs index.
        report: path of the gate's own HTML report.
    Returns:
        passed, status, counts, per-check results (severity, passed, observed, threshold, up to 20
        offending files), the quarantine list (every excluded file, with its error) and per-class counts.
    """
    quarantined = profile[profile["quarantined"]]
    status = gate_status(checks)
    return {
        "passed": status != "failed",
        "status": status,
        "images": int(len(profile)),
        "decoded": int(profile["decode_ok"].sum()),
        "quarantined": int(len(quarantined)),
        "failed_critical": failed(checks, "critical"),
        "failed_warning": failed(checks, "warning"),
        "checks": {check.name: check.as_dict() for check in checks},
        "quarantine": [{"id": row.id, "source_path": row.source_path, "error": row.error}
                       for row in quarantined.itertuples()],
        "classes": {row.label: {"train": int(row.n_train), "val": int(row.n_val), "test": int(row.n_test)}
                    for row in classes.itertuples()},
        "data_docs": data_docs,
        "report": report,
    }


def gate_status(checks: list[CheckResult]) -> str:
    """``failed`` (a critical check failed), ``passed_with_warnings`` (only warning checks failed) or ``passed``.

    Decided by our severities, not by GX's success flag, which is false as soon as any expectation fails.
    """
    if failed(checks, "critical"):
        return "failed"
    return "passed_with_warnings" if failed(checks, "warning") else "passed"


def check_outcome(check: dict[str, Any]) -> str:
    """``pass``, ``warn`` (a failed warning check) or ``fail`` (a failed critical check), from metrics.json."""
    if check["passed"]:
        return "pass"
    return "fail" if check["severity"] == "critical" else "warn"


def failed(checks: list[CheckResult], severity: str) -> list[str]:
    """Names of the failed checks of one severity."""
    return [check.name for check in checks if not check.passed and check.severity == severity]


def text_summary(metrics: dict[str, Any]) -> str:
    """A short human summary of the gate: one line per check, then the verdict."""
    lines = [f"validation gate: {metrics['images']} images, {metrics['decoded']} decoded, "
             f"{metrics['quarantined']} quarantined"]
    for name, check in metrics["checks"].items():
        mark = _MARKS[check_outcome(check)]
        example = f"  e.g. {check['offending'][0]}" if check["offending"] and not check["passed"] else ""
        lines.append(f"  {mark} {name:<24} {_short(check['observed'])}{example}")
    verdicts = {"passed": "PASSED",
                "passed_with_warnings": f"PASSED with warnings ({', '.join(metrics['failed_warning'])})",
                "failed": f"FAILED ({', '.join(metrics['failed_critical'])})"}
    lines.append(f"gate {verdicts[metrics['status']]}; report: {metrics['report']}")
    return "\n".join(lines)


def gate_error(metrics: dict[str, Any], metrics_path: str) -> str:
    """The message of the error that stops the pipeline: each failed critical check with example files."""
    parts = []
    for name in metrics["failed_critical"]:
        check = metrics["checks"][name]
        examples = "; ".join(check["offending"][:_EXAMPLES]) or _short(check["observed"])
        more = len(check["offending"]) - _EXAMPLES
        parts.append(f"{name} ({examples}{f'; +{more} more' if more > 0 else ''})")
    return (f"validation gate failed: {len(parts)} critical check(s): " + " | ".join(parts)
            + f". Details: {metrics_path}, report: {metrics['report']}")


def _short(observed: Any, width: int = 60) -> str:
    text = str(observed)
    return text if len(text) <= width else text[: width - 3] + "..."
