"""Stage `promote`: the better of this run's two models becomes champion only when it earns it.

Inputs: the dataset (its test split), the fine-tuned and the scratch baseline model directories, the
evaluation metrics (the verdict and ``recommended_model``). Output: the decision JSON (also a DVC
metric). Params: `promote`.

Rule: the candidate is the model the evaluation recommends: the fine-tuned one, unless the scratch
baseline beat it on all labels by the paired test (a negative full-label verdict), so the user gets
the better classifier either way. The candidate is promoted when there is no champion, or its test
accuracy beats the champion's by at least `promote.margin`, both measured here by the same code on the
same test split. A candidate trained on another set of classes than the champion's is a change of
task: it is refused unless `promote.allow_task_change` is true, and the decision names the classes
added and removed either way. Every candidate is registered as a version with its card and decision;
only a promotion moves the champion pointer (one atomic write), so a failed or rejected run never
touches the current champion. The pointer moves only if the champion is still the one compared
against (pipeline/registry.py); when another run promoted meanwhile, the comparison is made again with
its model. A rerun after a crash anywhere in here finds its version registered and finishes the job.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common.device import select_device
from pipeline.common.errors import TransientError
from pipeline.common.faults import kill_point
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params, PromoteParams
from pipeline.data.shards import use_validated, validation_field
from pipeline.models import LoadedModel
from pipeline.models.loaded import read_card
from pipeline.project import main_checkout
from pipeline.registry import ChampionChanged, Registry, open_registry, run_candidate
from pipeline.runs.naming import run_identity

__all__ = ["Args", "run", "test_accuracy", "class_change", "promotion_decision"]
log = get_logger(__name__)
_ATTEMPTS = 5  # comparisons with a champion that another run keeps replacing, before giving up (transient)


@dataclass
class Args:
    """Paths of the promote stage."""

    dataset: Path = field(metadata={"help": "dataset directory (its test split compares the models)"})
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


def test_accuracy(model: LoadedModel, dataset: Path, batch_size: int = 256) -> float:
    """Accuracy of a model on the dataset's test split (labels compared by class name).

    Args:
        model: a loaded model.
        dataset: the dataset directory.
        batch_size: images per forward pass.
    Returns:
        The accuracy in [0, 1].
    """
    images = model.inputs(dataset, "test")
    if len(images) == 0:
        raise ValueError(f"{dataset}: the test split is empty; nothing to compare models on")
    probs, _, _ = model.predict(images, batch_size=batch_size, desc=f"test accuracy of {model.name}")
    predicted = np.asarray(model.classes, dtype=object)[probs.argmax(1)]
    return float((predicted == images.rows["label"].astype(str).to_numpy()).mean())


def run(params: Params, args: Args) -> dict[str, Any]:
    """Decide, register and (maybe) promote; write the decision."""
    use_validated(args.dataset, args.validation)
    cfg = params.promote
    root = Path.cwd()
    registry = open_registry(cfg.registry, main_checkout(root))
    evaluation, model_dir = run_candidate(args.evaluation, args.model, args.baseline)
    verdict, recommended = evaluation["verdict"], evaluation["recommended_model"]
    device = select_device(params.common.device)
    candidate = LoadedModel.load(model_dir, device)
    if args.exports is not None:  # register the export stage's bundle: the same model, with its serving files
        model_dir = _same_model(args.exports, candidate)
    new_accuracy = test_accuracy(candidate, args.dataset)
    run = run_identity(root)
    base = {"verdict": verdict, "candidate": recommended, "candidate_reason": evaluation.get("recommended_reason", ""),
            "test_accuracy": round(new_accuracy, 4), "margin": cfg.margin, "registry": registry.location, **run}
    for attempt in range(1, _ATTEMPTS + 1):
        champion, token = registry.champion_and_token()
        if champion is not None and champion["version"] == run["run_name"]:  # a rerun after a crash past the swap
            decision = registry.card(run["run_name"])
            log.info("promotion: this run's version is already the champion (an earlier attempt promoted it)")
            break
        decision = {**base, **_compare(candidate, new_accuracy, champion, registry, args.dataset, device, cfg,
                                       run["run_name"])}
        if decision["version"] is not None:  # idempotent: a rerun after a crash finds its version registered
            registry.register(decision["version"], model_dir, decision,
                              extras=[args.model_card] if args.model_card is not None else [])
        kill_point("promote.registered")
        if not decision["promoted"]:
            break
        try:
            registry.set_champion(run["run_name"], {"test_accuracy": decision["test_accuracy"],
                                                     "run_tag": run["run_tag"], "reason": decision["reason"],
                                                     "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                  token)
            break
        except ChampionChanged:  # another run promoted while this one compared: compare with its model
            log.warning("promotion: the champion changed during the comparison (attempt %d of %d); comparing again",
                        attempt, _ATTEMPTS)
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


def _compare(candidate: LoadedModel, accuracy: float, champion: dict | None, registry: Registry, dataset: Path,
             device: torch.device, cfg: PromoteParams, version: str) -> dict[str, Any]:
    """The decision's fields for this candidate against this champion (both measured here, same test split);
    ``version`` is the name the candidate is registered under (none when it already is the champion)."""
    champion_accuracy, same_model, change = None, False, None
    if champion is not None:
        with tempfile.TemporaryDirectory() as scratch:
            champion_model = LoadedModel.load(registry.model_dir(champion["version"], Path(scratch)), device)
            same_model = champion_model.card["state_dict_sha256"] == candidate.card["state_dict_sha256"]
            change = class_change(champion_model.classes, candidate.classes)
            if change is None and not same_model:
                champion_accuracy = test_accuracy(champion_model, dataset)
    promoted, reason = promotion_decision(accuracy, champion, champion_accuracy, same_model, cfg.margin,
                                          change, cfg.allow_task_change)
    refused = change is not None and not cfg.allow_task_change
    return {"decision": "promoted" if promoted else "refused: task change" if refused else "kept champion",
            "promoted": promoted, "reason": reason, "task_change": change,
            "champion_test_accuracy": None if champion_accuracy is None else round(champion_accuracy, 4),
            "previous_champion": champion["version"] if champion else None,
            "version": None if same_model else version}


def class_change(champion: list[str], candidate: list[str]) -> str | None:
    """None when both models know the same classes; else which classes the candidate adds and drops."""
    added, removed = sorted(set(candidate) - set(champion)), sorted(set(champion) - set(candidate))
    if not added and not removed:
        return None
    parts = ([f"adds {added}"] if added else []) + ([f"drops {removed}"] if removed else [])
    return f"the candidate's classes differ from the champion's: it {' and '.join(parts)}"


def promotion_decision(accuracy: float, champion: dict | None, champion_accuracy: float | None,
                       same_model: bool, margin: float, change: str | None = None,
                       allow_task_change: bool = False) -> tuple[bool, str]:
    """The promotion rule for the run's better model; returns (promote?, why) in words.

    Args:
        accuracy: the candidate's test accuracy.
        champion: the champion's record, or None.
        champion_accuracy: the champion's accuracy on the same test split (None when not comparable).
        same_model: the candidate's weights are the champion's.
        margin: ``promote.margin``.
        change: :func:`class_change` of the two models (None: the same classes).
        allow_task_change: ``promote.allow_task_change``.
    """
    if champion is None:
        return True, f"no champion yet; test accuracy {accuracy:.4f}"
    if same_model:
        return False, f"this model is already the champion ({champion['version']})"
    if change is not None:
        if allow_task_change:
            return True, f"task change allowed by promote.allow_task_change: {change}; it replaces the champion"
        return False, (f"refused: {change} ({champion['version']}); a model for another task replaces the champion "
                       "only with promote.allow_task_change: true")
    if champion_accuracy is None:
        raise ValueError("promotion_decision: the champion's accuracy is needed when the classes are the same")
    if accuracy >= champion_accuracy + margin:
        return True, f"test accuracy {accuracy:.4f} beats the champion's {champion_accuracy:.4f} by >= {margin}"
    return False, (f"test accuracy {accuracy:.4f} does not beat the champion's {champion_accuracy:.4f} "
                   f"by the margin {margin}")
