"""The run summary people read first: a markdown digest of one run's outputs, plus report links.

It reads what the stages wrote (the metrics files that dvc.yaml declares, and dvc.lock for the data
version) and never recomputes anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.evaluation.model_card import CARD_MD
from pipeline.project import declared_options, declared_paths, dvc_stages
from pipeline.promotion.blessing import blessing_markdown, check_rows
from pipeline.common.run_names import tag_of

# stages whose skipping is what makes a rerun cheap (promote always re-checks the registry)
TRAINING_STAGES = ("select", "freeze", "finetune", "baseline", "evaluate")

__all__ = ["render_summary", "html_reports", "headline_table", "stage_metrics", "drift_summary"]


def stage_metrics(workspace: Path) -> dict[str, dict[str, Any]]:
    """Each stage's metrics (the JSON files under its dvc.yaml `metrics`), merged per stage."""
    found: dict[str, dict[str, Any]] = {}
    for name in dvc_stages(workspace):
        for rel in declared_paths(workspace, name, "metrics"):
            path = workspace / rel
            if path.is_file():
                found.setdefault(name, {}).update(json.loads(path.read_text()))
    return found


def data_version(workspace: Path) -> str:
    """The content hash DVC recorded for the ingested dataset (first out of the ingest stage)."""
    lock_path = workspace / "dvc.lock"
    if not lock_path.is_file():
        return "unknown (no dvc.lock)"
    outs = ((yaml.safe_load(lock_path.read_text()) or {}).get("stages", {}).get("ingest", {}) or {}).get("outs", [])
    return f"{outs[0]['path']} md5 {outs[0]['md5']}" if outs else "unknown (ingest not run)"


def _retried(stage: dict[str, Any]) -> str:
    """' (attempt 2, resuming at phase 1 epoch 3)' for a stage that a retry finished; nothing for a first attempt."""
    attempt = stage.get("attempt", 1)
    if attempt == 1:
        return ""
    return f" (attempt {attempt}, {stage['resumed']})" if stage.get("resumed") else f" (attempt {attempt})"


def render_summary(workspace: Path, name: str, reason: str, overrides: dict[str, Any],
                   stages: list[dict[str, Any]], commit: str) -> str:
    """Markdown summary of one run.

    Args:
        workspace: the run's worktree.
        name: run name (its git tag is ``run-<name>``).
        reason: why the run happened (schedule, dashboard, drift with its p-value...).
        overrides: the params the run overrode.
        stages: per-stage results (stage, status, seconds) in order.
        commit: the run commit.
    Returns:
        The markdown text.
    """
    metrics = stage_metrics(workspace)
    lines = [f"# Run `{name}`", "", f"- **Why**: {reason}", f"- **Version**: git tag `{tag_of(name)}` "
             f"(commit `{commit[:10]}`): `git checkout {tag_of(name)} && dvc pull` restores it",
             f"- **Data version**: {data_version(workspace)}",
             f"- **Overrides**: {json.dumps(overrides) if overrides else 'none (params.yaml as committed)'}",
             f"- **Workspace**: `{workspace}`", ""]
    lines += _headlines(metrics)
    lines += ["", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']}{_retried(s)} | {s['seconds']:.1f} |" for s in stages]
    ran = [s["stage"] for s in stages if s["status"] == "ran"]
    lines += ["", f"Stages that ran: {', '.join(ran) if ran else 'none (everything up to date)'}."]
    if not set(ran) & set(TRAINING_STAGES):
        lines.append("Training stages skipped: every one was up to date (same code, data and params as before).")
    for stage, values in metrics.items():
        # the headline numbers of a stage sit near the top; deep per-class tables stay in the reports
        shallow = [(key, value) for key, value in _flatten(values).items() if key.count(".") <= 1][:25]
        lines += ["", f"<details><summary>{stage} metrics</summary>", "", "| key | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in shallow]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def model_card(workspace: Path) -> str | None:
    """The run's model card (Markdown), when its chain has the card stage and it ran, with the promotion
    checks its candidate went through when the promote stage ran."""
    if "card" not in dvc_stages(workspace):
        return None
    path = workspace / declared_options(workspace, "card")["report_dir"] / CARD_MD
    if not path.is_file():
        return None
    decision = stage_metrics(workspace).get("promote", {})
    checks = f"\n{blessing_markdown(decision)}" if decision.get("blessing") else ""
    return path.read_text(encoding="utf-8") + checks


def promotion_checks(workspace: Path) -> list[dict[str, str]]:
    """(check, passed, detail) rows of the run's promotion blessing; none when the promote stage did not run."""
    return check_rows(stage_metrics(workspace).get("promote", {}))


def html_reports(workspace: Path) -> list[str]:
    """Every HTML report the run wrote, relative to its reports/ folder (the pages a person opens)."""
    reports = workspace / "reports"
    if not reports.is_dir():
        return []
    return [path.relative_to(reports).as_posix() for path in sorted(reports.rglob("*.html"))
            if ".gx" not in path.parts and "static" not in path.parts][:20]


# (stage, metric key) of the numbers the dashboard's table artifact shows for each run
HEADLINE_METRICS = (("finetune", "test_accuracy"), ("baseline", "test_accuracy"), ("evaluate", "verdict"),
                    ("drift", "drift_detected"), ("drift", "p_value"), ("promote", "decision"),
                    ("promote", "candidate"))


def headline_table(workspace: Path) -> list[dict[str, Any]]:
    """Rows (stage, metric, value) of the run's headline numbers, for a table artifact."""
    metrics = stage_metrics(workspace)
    return [{"stage": stage, "metric": key, "value": _fmt(metrics[stage][key])}
            for stage, key in HEADLINE_METRICS if key in metrics.get(stage, {})]


def _headlines(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """The facts a reviewer wants first, taken from whichever stages ran."""
    picks = [("select", "Chosen model", "{selected} (linear-probe accuracy {selected_linear_probe}; the cheapest "
                                        "candidate within tolerance of the best, see selection.json)"),
             ("freeze", "Freeze plan", "{strategy}: {trainable_params} of {total_params} parameters trainable, "
                                       "BatchNorm {bn_policy}"),
             ("finetune", "Fine-tuned", "val accuracy {val_accuracy}, test accuracy {test_accuracy} ({kept_reason})"),
             ("baseline", "Scratch baseline", "converged {converged} ({stopped_by} after {epochs_run} epochs), "
                                              "test accuracy {test_accuracy}"),
             ("baseline", "Scratch curve", "{curve_runs} runs ({curve_shared} shared with the baseline), all "
                                           "converged {curve_converged}, {curve_workers} side by side with the "
                                           "baseline in {curve_wall_seconds} s"),
             ("evaluate", "Transfer verdict", "{verdict}: {verdict_reason}"),
             ("drift", "Drift detected", "{drift_detected} (p = {p_value}; {n_reference} reference vs {n_current} "
                                         "current images; moved: {descriptors_moved})"),
             ("promote", "Promotion", "{decision} (the {candidate} model): {reason}")]
    lines = []
    for stage, label, template in picks:
        values = {key: _fmt(value) for key, value in _flat(metrics.get(stage, {})).items()}
        try:
            lines.append(f"- **{label}**: {template.format_map(values)}")
        except KeyError:  # that stage did not run (or wrote an older layout): leave the line out
            continue
    return lines


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics (the baseline stage's ``curve`` section) as ``curve_runs``-style keys, for the templates."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def drift_summary(workspace: Path, champion: str, links: list[tuple[str, str]] = ()) -> tuple[dict[str, Any], str]:
    """The drift verdict of a drift-check run and its markdown text.

    Args:
        workspace: the drift check's worktree.
        champion: the champion's version.
        links: (label, URL) of the run's reports (pipeline.runs.publish); the drift ones are linked.
    Returns:
        ({"drift_detected": bool, "reason": str}, markdown).
    """
    drift = stage_metrics(workspace).get("drift")
    if drift is None or "drift_detected" not in drift:
        raise FileNotFoundError(f"{workspace}: the drift stage wrote no drift_detected metric")
    flat = {k: v for k, v in _flatten(drift).items() if "p_value" in k or "effect" in k}
    reason = ", ".join(f"{k}={_fmt(v)}" for k, v in list(flat.items())[:6])
    verdict = {"drift_detected": bool(drift["drift_detected"]), "reason": reason or "see the drift report"}
    lines = [f"# Drift check against champion `{champion}`", "",
             f"- **Drift detected**: {verdict['drift_detected']}", f"- **Evidence**: {verdict['reason']}"]
    if "n_reference" in drift:
        share = (drift.get("detectable") or {}).get("share")
        lines.append(f"- **Sizes**: {drift['n_reference']} reference vs {drift['n_current']} current images"
                     + (f"; detectable share {share:.0%}" if share is not None else ""))
    lines += [f"- **Warning**: {warning}" for warning in drift.get("warnings", [])]
    lines += [f"- **Report**: [{label}]({link})" for label, link in links if "drift" in label]
    return verdict, "\n".join(lines) + "\n"
