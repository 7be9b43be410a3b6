"""One self-contained HTML evaluation report (templates/report.html.j2): summary first, PNGs embedded,
every number.

The report is rendered from the metrics dict that is written to metrics.json (already rounded by
:func:`pipeline.evaluation.metrics.rnd`), so the two can never disagree; its last section lists
every scalar of metrics.json by key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.common.html import render
from pipeline.common.io import write_text

__all__ = ["flatten", "fmt", "plain_summary", "render_report", "write_report"]


def fmt(value: Any) -> str:
    """How every number appears in the report: exactly as stored in metrics.json (None -> 'n/a')."""
    if value is None:
        return "n/a"
    return str(value)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar of a nested dict/list as ``a.b.0.c -> value``.

    Args:
        obj: the metrics.
        prefix: key prefix (for recursion).
    Returns:
        Flat mapping of dotted keys to scalars (str, int, float, bool, None).
    """
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _span(side: Mapping[str, Any]) -> str:
    return f"{fmt(side['mean'])} ({fmt(side['low'])}-{fmt(side['high'])})"


def _paired_sentence(what: str, c: Mapping[str, Any]) -> str:
    d = c["difference"]
    return (f"{what}, the fine-tuned model reaches {fmt(c['finetuned_accuracy'])} and the scratch baseline "
            f"{fmt(c['scratch_accuracy'])} on the same {c['n']} images (difference {fmt(d['mean'])}, "
            f"{fmt(d['low'])} to {fmt(d['high'])}; McNemar p = {fmt(c['p_value'])}): {c['verdict']}.")


def plain_summary(metrics: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences for the top of the report, from the very numbers of metrics.json.

    Args:
        metrics: the evaluation metrics (keys written by pipeline/stages/evaluate.py).
    Returns:
        Sentences, most important first.
    """
    full, curve = metrics["full_labels"], metrics["label_efficiency"]
    lines = [_paired_sentence(f"With all {metrics['labels_saved']['n_reference']} labels", full)]
    if full["baseline_problem"]:
        lines.append(f"The scratch baseline {full['baseline_problem']}: it is no evidence either way.")
    for point in curve["budgets"]:
        t, s = point["transfer"], point["scratch"]
        state = "converged" if s["converged"] else "NOT converged"
        lines.append(f"With {point['budget']} labels per class ({point['n_labels']} images, "
                     f"{t['n_seeds']} seeds), the linear probe reaches {_span(t)} and scratch trained to convergence "
                     f"{_span(s)} (scratch {state}, about {s['steps']} steps and {fmt(s['seconds'])} s a run): "
                     f"{point['verdict']}.")
    lines += [f"Budget {skip}: not drawn." for skip in curve["skipped"]]
    if metrics["shift"]:
        lines.append(_paired_sentence("On the domain-shift set", metrics["shift"]))
    elif metrics.get("shift_unscored"):  # (metrics.json written before 2026-12-07 lack the key)
        lines.append(f"The domain-shift set is not compared: {metrics['shift_unscored']}.")
    saved = metrics["labels_saved"]
    if saved["bound"] == "unknown":
        lines.append(f"Labels saved: unknown, {saved['why']}.")
    elif saved["bound"] == "never":
        lines.append(f"Transfer never matched {saved['reference']} ({fmt(saved['target_accuracy'])}): no labels saved.")
    else:
        qualifier = "at most " if saved["bound"] == "at_most" else ""
        lines.append(f"Transfer needs {qualifier}{fmt(saved['labels_needed'])} labels ({fmt(saved['share_needed'])} "
                     f"of {saved['n_reference']}) to match {saved['reference']} ({fmt(saved['target_accuracy'])}): "
                     f"labels saved {fmt(saved['labels_saved'])}.")
    time = metrics["time_saved"]
    transfer = f"{fmt(time['transfer_s'])} s" if time["reached"] == "yes" else "never"
    lines.append(f"Time to reach the converged scratch baseline's best validation accuracy "
                 f"({fmt(time['target_accuracy'])}): fine-tuned {transfer}, scratch {fmt(time['scratch_s'])} s.")
    refs = metrics["references"]
    lines.append(f"Trivial references on the test split: the majority class {fmt(refs['majority_class'])}, a logistic "
                 f"regression on raw pixels {fmt(refs['pixel_logistic_regression'])}.")
    lines.append(f"Promotion considers the {metrics['recommended_model']} model: {metrics['recommended_reason']}.")
    lines.append(f"Intervals: {metrics['interval_method']}.")
    return lines


def _row(item: tuple[str, Mapping[str, Any]], keys: Sequence[str]) -> list[Any]:
    """A table row from a (name, figures) pair: the name, then the figures at ``keys``."""
    name, values = item
    return [name, *(values.get(k) for k in keys)]


def render_report(metrics: Mapping[str, Any], figures: Mapping[str, str | os.PathLike], title: str) -> str:
    """The report as one HTML string (templates/report.html.j2).

    Args:
        metrics: the evaluation metrics (exactly what metrics.json holds).
        figures: section name -> PNG path (label_efficiency, robustness, confusion, learning_curves,
            ideal_inputs, adversarial, fgsm; missing ones are skipped).
        title: the page title.
    Returns:
        The HTML.
    """
    curve_rows = [[p["name"], p["n_labels"], p["transfer"]["mean"],
                   f"{fmt(p['transfer']['low'])} - {fmt(p['transfer']['high'])}", p["transfer"]["seconds"],
                   p["scratch"]["mean"], f"{fmt(p['scratch']['low'])} - {fmt(p['scratch']['high'])}",
                   p["scratch"]["converged"], p["scratch"]["steps"], p["scratch"]["seconds"], p["gain"], p["verdict"]]
                  for p in metrics["label_efficiency"]["budgets"]]
    paired = [[name, c["n"], c["finetuned_accuracy"], c["scratch_accuracy"], c["difference"]["mean"],
               f"{fmt(c['difference']['low'])} - {fmt(c['difference']['high'])}", c["p_value"], c["verdict"]]
              for name, c in (("all labels (test)", metrics["full_labels"]), ("shift set", metrics["shift"])) if c]
    return render(__file__, "report.html.j2", filters={"fmt": fmt, "model_row": _row}, title=title, m=metrics,
                  summary=plain_summary(metrics), curve_rows=curve_rows, paired=paired, figures=dict(figures),
                  every=list(flatten(metrics).items()))


def write_report(path: str | os.PathLike, metrics: Mapping[str, Any], figures: Mapping[str, str | os.PathLike],
                 title: str = "tlops evaluation report") -> Path:
    """Render the report and write it atomically.

    Args:
        path: the HTML file to write.
        metrics: the evaluation metrics.
        figures: section name -> PNG path.
        title: the page title.
    Returns:
        The path.
    """
    return write_text(path, render_report(metrics, figures, title))
