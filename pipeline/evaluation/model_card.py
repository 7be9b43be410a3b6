"""The human model card: what the registered model is for, what it was trained on, how good it is (with
intervals), why transfer was or was not worth it, how it holds up under corruption and drift, and where it
stops being trustworthy, plus the three lines that load it with plain timm/torch.

Every figure is read from the run's own outputs (ingest, validate, evaluate, drift and export metrics and
the model's card.json), never recomputed, so the card cannot disagree with what the gate decided on.
Rendered as Markdown (templates/model_card.md; the registry keeps it with the version, the dashboard shows
it as an artifact) and as a self-contained HTML page beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from markdown_it import MarkdownIt

from pipeline.common.html import render, write_html
from pipeline.common.io import read_json, write_text

__all__ = ["CardInputs", "render_card", "write_card", "card_title", "load_lines", "limitations", "CARD_MD",
           "CARD_HTML", "SMALL_CLASS"]
CARD_MD = "model_card.md"
CARD_HTML = "model_card.html"
SMALL_CLASS = 10  # test images of a class below which its per-class figures are named as unreliable


@dataclass(frozen=True)
class CardInputs:
    """The run outputs a card is made from (paths as dvc.yaml declares them)."""

    ingest: Path
    validation: Path
    evaluation: Path
    drift: Path
    export: Path
    model: Path  # the registered bundle: card.json (+ export.json)

    def read(self) -> dict[str, Any]:
        return {"ingest": read_json(self.ingest), "validation": read_json(self.validation),
                "evaluation": read_json(self.evaluation), "drift": read_json(self.drift),
                "export": read_json(self.export), "model": read_json(self.model / "card.json")}


def render_card(inputs: Mapping[str, Any], run: Mapping[str, Any], source: str, family: str,
                data_version: str, confidence: float) -> str:
    """The card's Markdown.

    Args:
        inputs: :meth:`CardInputs.read`.
        run: run_name / run_tag of the run (pipeline/common/run_names.py).
        source: where the data came from (``source.location``).
        family: the architecture's family in the catalog (``timm`` or ``torchvision``).
        data_version: the dataset's content hash (pipeline/data/shards.py dataset_version).
        confidence: the intervals' coverage (``evaluate.confidence``).
    """
    evaluation, model = inputs["evaluation"], inputs["model"]
    candidate = inputs["export"]["candidate"]  # "finetuned" or "scratch": the model this card describes
    other = "scratch" if candidate == "finetuned" else "finetuned"
    test = evaluation["models"]["test"][candidate]
    context = {
        "run": run, "source": source, "data_version": data_version, "model": model, "candidate": candidate,
        "other": other, "ingest": inputs["ingest"], "validation": inputs["validation"], "evaluation": evaluation,
        "drift": inputs["drift"], "export": inputs["export"], "test": test,
        "interval": evaluation["full_labels"][f"{candidate}_interval"],
        "shift_interval": evaluation["shift"][f"{candidate}_interval"] if evaluation["shift"] else None,
        "per_class": test["per_class"], "robustness": evaluation["robustness"][candidate],
        "load": load_lines(model, family), "limitations": limitations(inputs, candidate),
        "confidence": confidence, "pct": _pct,
    }
    return render(__file__, "model_card.md", filters={"num": _num}, **context)


def load_lines(model: Mapping[str, Any], family: str) -> list[str]:
    """Code that loads the model without tlops: timm + torch for timm networks (their state dict is timm's),
    the TorchScript export for the others (their state dict wraps torchvision's in our adapter)."""
    n = len(model["classes"])
    if family == "timm":
        return ["import timm, torch",
                f'model = timm.create_model("{model["arch"]}", num_classes={n})',
                'model.load_state_dict(torch.load("model.pt", weights_only=True)); model.eval()']
    return ["import torch",
            'model = torch.jit.load("model.torchscript.pt").eval()',
            "logits = model(images)  # images: float32 [N, 3, S, S], preprocessed as below"]


def limitations(inputs: Mapping[str, Any], candidate: str) -> list[str]:
    """What the numbers do not cover, in sentences, from this run's own figures."""
    evaluation, validation, drift = inputs["evaluation"], inputs["validation"], inputs["drift"]
    interval = evaluation["full_labels"][f"{candidate}_interval"]
    n = evaluation["full_labels"]["n"]
    notes = [f"It knows only its {len(inputs['model']['classes'])} classes: an image of anything else still gets "
             "one of them, often with high confidence. Screen inputs first (drift check, `tlops predict` refusals).",
             f"Test accuracy comes from {n} test images: the true accuracy may lie anywhere in "
             f"[{interval['low']:.3f}, {interval['high']:.3f}]."]
    small = sorted(c for c, row in evaluation["models"]["test"][candidate]["per_class"].items()
                   if row["support"] < SMALL_CLASS)
    if small:
        notes.append(f"Classes with fewer than {SMALL_CLASS} test images ({', '.join(small)}): their per-class "
                     "figures are anecdotes, not estimates.")
    problem = evaluation["full_labels"].get("baseline_problem")
    if problem:
        notes.append(f"The from-scratch comparison is not a result: {problem}.")
    clean = evaluation["test_accuracy"][candidate]
    shifted = evaluation["shift_accuracy"][candidate]
    if shifted is None:
        notes.append(f"Robustness to corruption was not measured: the domain-shift set {evaluation['shift_unscored']}.")
    elif shifted < clean:
        worst = min(((c, s, a) for c, row in evaluation["robustness"][candidate].items() if c != "none"
                     for s, a in row.items()), key=lambda t: t[2], default=None)
        tail = f"; worst: {worst[0]} at severity {worst[1]}, {worst[2]:.3f}" if worst else ""
        notes.append(f"Under corruption accuracy falls from {clean:.3f} to {shifted:.3f}{tail}.")
    if validation.get("failed_warning"):
        notes.append(f"The training data passed the validation gate with warnings: "
                     f"{', '.join(validation['failed_warning'])} (reports/validate/report.html).")
    notes += [f"Drift check at training time: {warning}." for warning in drift.get("warnings", [])]
    size = inputs["model"]["preprocessing"]["image_size"]
    notes.append(f"Inputs are resized to {size}x{size} px: detail finer than that is lost.")
    return notes


def write_card(out_dir: Path, markdown: str, title: str) -> tuple[Path, Path]:
    """Write model_card.md and the same card as a self-contained HTML page into ``out_dir``."""
    md_path = write_text(out_dir / CARD_MD, markdown)
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    html_path = write_html(out_dir / CARD_HTML, __file__, "model_card.html.j2", title=title, body=body)
    return md_path, html_path


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and 0 < abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def card_title(model: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """The card's title: the architecture and the run."""
    return f"Model card: {model['model']} ({run.get('run_name') or 'manual run'})"

