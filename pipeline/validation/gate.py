"""What the gate tells people: metrics.json content, the short text summary, the failure message."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.validation.suite import CheckResult

__all__ = ["gate_metrics", "failed", "text_summary", "gate_error"]
_EXAMPLES = 3  # offending files named per check in the one-line error


def gate_metrics(checks: list[CheckResult], profile: pd.DataFrame, classes: pd.DataFrame,
                 data_docs: str) -> dict[str, Any]:
    """The full gate outcome for metrics.json.

    Args:
        checks: the results of every check.
        profile: the profile table (with ``quarantined``).
        classes: the class table.
        data_docs: path of the Data Docs index.
    Returns:
        passed, counts, per-check results (severity, passed, observed, up to 20 offending files),
        the quarantine list (every excluded file, with its error) and per-class counts.
    """
    quarantined = profile[profile["quarantined"]]
    return {
        "passed": not failed(checks, "critical"),
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
    }


def failed(checks: list[CheckResult], severity: str) -> list[str]:
    """Names of the failed checks of one severity."""
    return [check.name for check in checks if not check.passed and check.severity == severity]


def text_summary(metrics: dict[str, Any]) -> str:
    """A short human summary of the gate: one line per check, then the verdict."""
    lines = [f"validation gate: {metrics['images']} images, {metrics['decoded']} decoded, "
             f"{metrics['quarantined']} quarantined"]
    for name, check in metrics["checks"].items():
        mark = "ok  " if check["passed"] else ("FAIL" if check["severity"] == "critical" else "warn")
        example = f"  e.g. {check['offending'][0]}" if check["offending"] and not check["passed"] else ""
        lines.append(f"  {mark} {name:<24} {_short(check['observed'])}{example}")
    verdict = "PASSED" if metrics["passed"] else f"FAILED ({', '.join(metrics['failed_critical'])})"
    lines.append(f"gate {verdict}; Data Docs: {metrics['data_docs']}")
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
            + f". Details: {metrics_path}, Data Docs: {metrics['data_docs']}")


def _short(observed: Any, width: int = 60) -> str:
    text = str(observed)
    return text if len(text) <= width else text[: width - 3] + "..."
