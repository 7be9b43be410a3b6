"""Stage `promote`: the new model becomes champion only when it earns it.

Inputs: the dataset (its test split), the fine-tuned model directory, the evaluation metrics (for
the transfer verdict). Output: the decision JSON (also a DVC metric). Params: `promote`.

Rule: promote when the transfer verdict is not `negative` AND (there is no champion, or the new model's
test accuracy beats the champion's by at least `promote.margin`, both measured here by the same code
on the same test split). Every evaluated model is registered as a version with its card and decision;
only a promotion moves the champion pointer (one atomic write), so a failed or rejected run never
touches the current champion.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.device import select_device
from pipeline.common.io import read_json, write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.shards import read_classes, use_validated, validation_field
from pipeline.models import LoadedModel
from pipeline.project import main_checkout
from pipeline.registry import open_registry
from pipeline.runs.naming import run_identity

__all__ = ["Args", "run", "test_accuracy", "promotion_decision"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the promote stage."""

    dataset: Path = field(metadata={"help": "dataset directory (its test split compares the models)"})
    model: Path = field(metadata={"help": "the fine-tuned model directory (the candidate)"})
    evaluation: Path = field(metadata={"help": "the evaluate stage's metrics.json (the transfer verdict)"})
    decision: Path = field(metadata={"help": "decision.json to write"})
    validation: Path | None = validation_field()


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
    verdict = read_json(args.evaluation).get("verdict")
    if verdict is None:
        raise ValueError(f"{args.evaluation}: no 'verdict' key (run the evaluate stage first)")
    device = select_device(params.common.device)
    candidate = LoadedModel.load(args.model, device)
    classes = read_classes(args.dataset)
    new_accuracy = test_accuracy(candidate, args.dataset)
    champion = registry.champion()
    champion_accuracy, same_model = None, False
    if champion is not None:
        with tempfile.TemporaryDirectory() as scratch:
            champion_model = LoadedModel.load(registry.model_dir(champion["version"], Path(scratch)), device)
            same_model = champion_model.card["state_dict_sha256"] == candidate.card["state_dict_sha256"]
            if sorted(champion_model.classes) == sorted(classes):
                champion_accuracy = test_accuracy(champion_model, args.dataset)
    promoted, reason = promotion_decision(verdict, new_accuracy, champion, champion_accuracy, same_model, cfg.margin)
    run = run_identity(root)
    decision = {"decision": "promoted" if promoted else "kept champion", "promoted": promoted, "reason": reason,
                "verdict": verdict, "test_accuracy": round(new_accuracy, 4),
                "champion_test_accuracy": None if champion_accuracy is None else round(champion_accuracy, 4),
                "previous_champion": champion["version"] if champion else None, "margin": cfg.margin,
                "version": None, "registry": registry.location, **run}
    if not same_model:
        decision["version"] = run["run_name"]
        registry.register(run["run_name"], args.model, decision)
    if promoted:
        registry.set_champion(run["run_name"], {"test_accuracy": decision["test_accuracy"], "run_tag": run["run_tag"],
                                                 "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                 "reason": reason})
    (log.info if promoted else log.warning)("promotion: %s (%s)", decision["decision"], reason)
    write_json(args.decision, decision)
    return decision


def promotion_decision(verdict: str, accuracy: float, champion: dict | None, champion_accuracy: float | None,
            same_model: bool, margin: float) -> tuple[bool, str]:
    """The promotion rule; returns (promote?, why) in words."""
    if verdict == "negative":
        return False, "negative transfer: the from-scratch baseline beat the fine-tuned model"
    if champion is None:
        return True, f"no champion yet; transfer verdict {verdict}, test accuracy {accuracy:.4f}"
    if same_model:
        return False, f"this model is already the champion ({champion['version']})"
    if champion_accuracy is None:
        return True, "the champion was trained on other classes; the new model replaces it for the current task"
    if accuracy >= champion_accuracy + margin:
        return True, f"test accuracy {accuracy:.4f} beats the champion's {champion_accuracy:.4f} by >= {margin}"
    return False, (f"test accuracy {accuracy:.4f} does not beat the champion's {champion_accuracy:.4f} "
                   f"by the margin {margin}")
