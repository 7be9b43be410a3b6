"""Stage `promote`: the better of this run's two models becomes champion only when it earns it.

Inputs: the dataset (its splits), the fine-tuned and the scratch baseline model directories, the
evaluation metrics (the verdict and ``recommended_model``). Output: the decision JSON (also a DVC
metric). Params: `promote` (params.yaml only: the dashboard's form cannot set them), `freeze.probe_cs`.

The candidate is the model the evaluation recommends: the fine-tuned one, unless the scratch baseline
beat it on all labels by the paired test (a negative full-label verdict), so the user gets the better
classifier either way. It is blessed (pipeline/promotion/blessing.py) on the evaluation set
(pipeline/promotion/evalset.py): this run's test split plus the champion's registered test images,
deduplicated by hash, without any image either model trained on; the candidate, the champion and the
trivial references answer for the same images, scored here by the same code. A candidate trained on
another set of classes than the champion's is a change of task: it is refused unless
`promote.allow_task_change` is true, and the decision names the classes added and removed either way.

Every candidate is registered as a version; only a blessed one becomes champion, and a rerun after a
crash finishes the job (pipeline/promotion/candidate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.config import Params
from pipeline.project import main_checkout, run_identity
from pipeline.promotion.candidate import Candidate, promote_candidate
from pipeline.registry import open_registry, run_candidate
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]


@dataclass
class Args:
    """Paths of the promote stage."""

    dataset: Path = field(metadata={"help": "dataset directory (its test split, with the champion's registered test "
                                            "images, is where the models are compared)"})
    model: Path = field(metadata={"help": "the fine-tuned model directory"})
    baseline: Path = field(metadata={"help": "the scratch baseline model directory (the candidate when it is "
                                             "the better model)"})
    evaluation: Path = field(metadata={"help": "the evaluate stage's metrics.json (the transfer verdict)"})
    decision: Path = field(metadata={"help": "decision.json to write"})
    validation: Path | None = validation_field()
    model_card: Path | None = field(default=None, metadata={
        "help": "the card stage's model_card.md: stored with the registered version (None: none)"})
    exports: Path | None = field(default=None, metadata={
        "help": "the export stage's bundle (the candidate with its TorchScript and ONNX files): registered in "
                "place of the bare candidate (None in code: the candidate's directory)"})


def run(params: Params, args: Args) -> dict[str, Any]:
    """Decide, register and (maybe) promote; write the decision."""
    dataset = use_validated(args.dataset, args.validation)
    root = Path.cwd()
    registry = open_registry(params.promote.registry, main_checkout(root))
    evaluation, model_dir = run_candidate(args.evaluation, args.model, args.baseline)
    device = select_device(params.common.device)
    candidate = Candidate.of_run(model_dir, dataset, evaluation, device, args.exports, args.model_card)
    decision = promote_candidate(registry, candidate, run_identity(root), params, device)
    write_json(args.decision, decision)
    return decision
