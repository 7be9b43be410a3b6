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


def plain_summary(metrics: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences for the top of the report.

    Args:
        metrics: the evaluation metrics (keys written by pipeline/evaluate.py).
    Returns:
        Sentences, most important first.
    """
    lines = []
    for point in metrics["label_efficiency"]["curve"]:
        t, s = point["transfer"], point["scratch"]
        labels = "all labels" if point["budget"] is None else f"{point['budget']} labels per class"
        lines.append(f"With {labels} ({point['n_labels']} images), transfer reaches {fmt(t['mean'])} test accuracy "
                     f"({fmt(t['low'])}-{fmt(t['high'])}), "
                     f"scratch {fmt(s['mean'])} ({fmt(s['low'])}-{fmt(s['high'])}).")
    saved = metrics["label_efficiency"]["labels_saved"]
    if saved["bound"] == "never":
        lines.append(f"Transfer never matched scratch trained on {saved['reference']} labels "
                     f"({fmt(saved['target_accuracy'])}): no labels saved.")
    else:
        qualifier = "at most " if saved["bound"] == "at_most" else ""
        lines.append(f"Transfer needs {qualifier}{fmt(saved['labels_needed'])} labels ({fmt(saved['share_needed'])} "
                     f"of {saved['n_reference']}) to match scratch trained on {saved['reference']} "
                     f"({fmt(saved['target_accuracy'])}): labels saved {fmt(saved['labels_saved'])}.")
    lines.append(_full_label_sentence(metrics))
    time = metrics.get("time_saved")
    if time:
        transfer = f"{fmt(time['transfer_s'])} s" if time["reached"] == "yes" else "never"
        lines.append(f"Time to reach scratch's best validation accuracy ({fmt(time['target_accuracy'])}): "
                     f"transfer {transfer}, scratch {fmt(time['scratch_s'])} s.")
    return lines


def _full_label_sentence(metrics: Mapping[str, Any]) -> str:
    """The trained models side by side: the curve's short runs must not hide a scratch model that wins."""
    acc, curve = metrics["test_accuracy"], metrics["label_efficiency"]
    gap = acc["finetuned"] - acc["scratch"]
    lead = "the fine-tuned model is ahead" if gap > 0 else "scratch is ahead" if gap < 0 else "they tie"
    return (f"With all labels and the same optimizer steps, the fine-tuned model reaches {fmt(acc['finetuned'])} "
            f"test accuracy and scratch {fmt(acc['scratch'])}: {lead}. The curve above uses shorter runs "
            f"({fmt(curve['steps'])} steps at {fmt(curve['image_size'])} px), where scratch is further from "
            f"converged; raise evaluate.curve_steps to compare at convergence.")


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
                   f"{fmt(p['transfer']['low'])} - {fmt(p['transfer']['high'])}", p["scratch"]["mean"],
                   f"{fmt(p['scratch']['low'])} - {fmt(p['scratch']['high'])}", p["gain"], p["verdict"]]
                  for p in metrics["label_efficiency"]["curve"]]
    return render(__file__, "report.html.j2", filters={"fmt": fmt, "model_row": _row}, title=title, m=metrics,
                  summary=plain_summary(metrics), curve_rows=curve_rows, figures=dict(figures),
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
