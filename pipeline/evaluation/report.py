"""One self-contained HTML evaluation report: summary first, PNGs embedded (base64), every number.

The report is rendered from the metrics dict that is written to metrics.json (already rounded by
:func:`pipeline.evaluation.metrics.rnd`), so the two can never disagree; its last section lists
every scalar of metrics.json by key.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.common.io import write_text

__all__ = ["flatten", "fmt", "plain_summary", "render_report", "write_report"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.verdict{padding:.8em 1em;border-radius:6px;font-size:1.2em;margin:1em 0}
.positive{background:#e3f5e1}.no_gain{background:#fff6d6}.negative{background:#fbdcdc;border:3px solid #c00}
.summary li{margin:.3em 0}code{background:#f3f3f3;padding:0 .3em}"""


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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v) if not isinstance(v, str) else v)}</td>" for v in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: str | os.PathLike, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _model_tables(metrics: Mapping[str, Any]) -> str:
    keys = ("accuracy", "macro_f1", "ece", "n")
    parts = []
    for split, per_model in metrics["models"].items():
        rows = [[model, *(m[k] for k in keys)] for model, m in per_model.items()]
        parts.append(f"<h3>{html.escape(split)}</h3>" + _table(["model", *keys], rows))
    cost = [[model, *(c.get(k) for k in ("trainable_params", "train_seconds", "images_per_s"))]
            for model, c in metrics["cost"].items()]
    parts.append("<h3>training cost</h3>" + _table(["model", "trainable params", "train seconds", "images/s"], cost))
    return "".join(parts)


def _per_class(metrics: Mapping[str, Any]) -> str:
    parts = []
    for model, m in metrics["models"]["test"].items():
        rows = [[name, s["precision"], s["recall"], s["f1"], s["support"]] for name, s in m["per_class"].items()]
        parts.append(f"<h3>{html.escape(model)}</h3>" + _table(["class", "precision", "recall", "F1", "support"], rows))
    return "".join(parts)


def render_report(metrics: Mapping[str, Any], figures: Mapping[str, str | os.PathLike], title: str) -> str:
    """The report as one HTML string.

    Args:
        metrics: the evaluation metrics (exactly what metrics.json holds).
        figures: section name -> PNG path (label_efficiency, robustness, confusion, learning_curves,
            ideal_inputs, adversarial, fgsm; missing ones are skipped).
        title: the page title.
    Returns:
        The HTML.
    """
    verdict = metrics["verdict"]
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in plain_summary(metrics))
    curve_rows = [[p["name"], p["n_labels"], p["transfer"]["mean"], f"{fmt(p['transfer']['low'])} - "
                   f"{fmt(p['transfer']['high'])}", p["scratch"]["mean"],
                   f"{fmt(p['scratch']['low'])} - {fmt(p['scratch']['high'])}", p["gain"], p["verdict"]]
                  for p in metrics["label_efficiency"]["curve"]]
    fig = {name: _image(path, name) for name, path in figures.items()}
    every = _table(["metrics.json key", "value"], [[k, v] for k, v in flatten(metrics).items()])
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="verdict {verdict}"><b>Transfer verdict: {verdict.upper()}</b> — '
        f"{html.escape(metrics['verdict_reason'])}</div>",
        f'<ul class="summary">{summary}</ul>',
        "<h2>Label efficiency</h2>", fig.get("label_efficiency", ""),
        _table(["budget", "labels", "transfer", "interval", "scratch", "interval", "gain", "verdict"], curve_rows),
        "<h2>Test and domain-shift metrics</h2>", _model_tables(metrics),
        "<h2>Robustness: accuracy by corruption and severity</h2>", fig.get("robustness", ""),
        "<h2>Confusion matrices (test)</h2>", fig.get("confusion", ""),
        "<h2>Learning curves</h2>", fig.get("learning_curves", ""),
        "<h2>What the models learned</h2><p>Class 'ideal' inputs (gradient ascent from noise, total-variation "
        "penalty):</p>", fig.get("ideal_inputs", ""),
        "<p>Adversarial pairs: a correctly classified test image nudged until the label flips:</p>",
        fig.get("adversarial", ""), "<p>Accuracy under FGSM:</p>", fig.get("fgsm", ""),
        "<h2>Per-class scores (test)</h2>", _per_class(metrics),
        "<h2>Every figure in metrics.json</h2>", every,
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")


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
