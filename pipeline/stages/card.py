"""Stage ``card``: the human model card of the run's candidate, in Markdown and HTML.

Inputs: the dataset (its version), the ingest, validate, evaluate, drift and export metrics, and the export
bundle (the candidate's card.json). Output: a report folder with ``model_card.md`` and ``model_card.html``
(pipeline/evaluation/model_card.py): intended use, data version and classes, metrics with intervals, the
transfer verdict and why, robustness per corruption, drift at training time, the exports' checks,
limitations drawn from this run's figures, and the lines that load the model with plain timm/torch.
Promotion stores the Markdown with the registry version; the flow shows it as an artifact.
Params: ``common``, ``source.location`` (named as the data's origin) and ``evaluate.confidence`` (the intervals').
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.io import atomic_dir
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.shards import dataset_version, read_manifest
from pipeline.evaluation.model_card import CARD_MD, CardInputs, card_title, render_card, write_card
from pipeline.models.catalog import get_spec
from pipeline.project import run_identity
from pipeline.stages.protocol import use_validated

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the card stage."""

    dataset: Path = field(metadata={"help": "dataset directory (its version is named on the card)"})
    ingest: Path = field(metadata={"help": "the ingest stage's metrics.json (image and class counts)"})
    validation: Path = field(metadata={"help": "the validate stage's metrics.json (the gate's status)"})
    evaluation: Path = field(metadata={"help": "the evaluate stage's metrics.json"})
    drift: Path = field(metadata={"help": "the drift stage's drift.json (drift at training time)"})
    export: Path = field(metadata={"help": "the export stage's metrics.json (which model, the exports' checks)"})
    model: Path = field(metadata={"help": "the export bundle: the candidate's card.json"})
    report_dir: Path = field(metadata={"help": "folder to write model_card.md and model_card.html into"})


def run(params: Params, args: Args) -> dict[str, Any]:
    """Render the card from the run's outputs and write it."""
    dataset = use_validated(args.dataset, args.validation)
    inputs = CardInputs(args.ingest, args.validation, args.evaluation, args.drift, args.export, args.model).read()
    run_info = run_identity(Path.cwd())
    markdown = render_card(inputs, run_info, params.source.location, get_spec(inputs["model"]["model"]).family,
                           dataset_version(read_manifest(dataset)["sha256"].tolist()), params.evaluate.confidence)
    with atomic_dir(args.report_dir) as tmp:
        write_card(tmp, markdown, card_title(inputs["model"], run_info))
    log.info("model card of the %s model: %s", inputs["export"]["candidate"], args.report_dir / CARD_MD)
    return {"card": str(args.report_dir / CARD_MD), "candidate": inputs["export"]["candidate"]}
