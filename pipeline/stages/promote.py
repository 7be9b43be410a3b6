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

Every candidate is registered as a version with its card, decision and data record (its test images and
the hashes it trained on, for later blessings); only a promotion moves the champion pointer (one atomic
write), so a failed or rejected run never touches the current champion. The pointer moves only if the
champion is still the one compared against (pipeline/registry.py); when another run promoted meanwhile,
the comparison is made again with its model. A rerun after a crash anywhere in here finds its version
registered and finishes the job.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.device import select_device
from pipeline.common.errors import TransientError
from pipeline.common.faults import kill_point
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.models import LoadedModel
from pipeline.models.loaded import read_card
from pipeline.project import main_checkout
from pipeline.promotion.decide import decide
from pipeline.promotion.evalset import DataRecord
from pipeline.registry import DATA, ChampionChanged, open_registry, run_candidate
from pipeline.runs.naming import run_identity
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]
log = get_logger(__name__)
_ATTEMPTS = 5  # comparisons with a champion that another run keeps replacing, before giving up (transient)


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
    verdict, recommended = evaluation["verdict"], evaluation["recommended_model"]
    device = select_device(params.common.device)
    candidate = LoadedModel.load(model_dir, device)
    if args.exports is not None:  # register the export stage's bundle: the same model, with its serving files
        model_dir = _same_model(args.exports, candidate)
    run = run_identity(root)
    base = {"verdict": verdict, "candidate": recommended, "candidate_reason": evaluation.get("recommended_reason", ""),
            "registry": registry.location, **run}
    with tempfile.TemporaryDirectory() as scratch:
        candidate_data = DataRecord.of_dataset(dataset)
        data = candidate_data.write(Path(scratch) / DATA)
        for attempt in range(1, _ATTEMPTS + 1):
            champion, token = registry.champion_and_token()
            if champion is not None and champion["version"] == run["run_name"]:  # a rerun after a crash past the swap
                decision = registry.card(run["run_name"])
                log.info("promotion: this run's version is already the champion (an earlier attempt promoted it)")
                break
            decided = decide(candidate, candidate_data, champion, registry, device, params, dataset)
            version = None if decided.pop("same_model") else run["run_name"]
            decision = {**base, **decided, "version": version}
            if decision["version"] is not None:  # idempotent: a rerun after a crash finds its version registered
                registry.register(decision["version"], model_dir, decision,
                                  extras=[args.model_card] if args.model_card is not None else [], data=data)
            kill_point("promote.registered")
            if not decision["promoted"]:
                break
            try:
                registry.set_champion(run["run_name"], {"test_accuracy": decision["test_accuracy"],
                                                         "run_tag": run["run_tag"], "reason": decision["reason"],
                                                         "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())},
                                      token, reason=f"{decision['decision']}: {decision['reason']}")
                break
            except ChampionChanged:  # another run promoted while this one compared: compare with its model
                log.warning("promotion: the champion changed during the comparison (attempt %d of %d); comparing "
                            "again", attempt, _ATTEMPTS)
        else:
            raise TransientError(f"{registry.location}: the champion kept changing during {_ATTEMPTS} comparisons")
    kill_point("promote.swapped")
    (log.info if decision["promoted"] else log.warning)("promotion: %s (%s)", decision["decision"], decision["reason"])
    write_json(args.decision, decision)
    return decision


def _same_model(bundle: Path, candidate: LoadedModel) -> Path:
    """The export bundle, once its card names the candidate's weights (an export of another model never
    reaches the registry under this run's name)."""
    exported = read_card(bundle)
    if exported["state_dict_sha256"] != candidate.card["state_dict_sha256"]:
        raise ValueError(f"{bundle}: exports another model than the candidate {candidate.name} "
                         f"({exported['state_dict_sha256'][:12]} vs {candidate.card['state_dict_sha256'][:12]}); "
                         "re-run the export stage")
    return bundle
