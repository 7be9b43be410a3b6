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

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.device import select_device
from pipeline.common.io import read_json, write_json
from pipeline.common.logs import get_logger, progress
from pipeline.config import Params
from pipeline.data.images import decode_rgb
from pipeline.data.shards import iter_records, read_classes, use_validated, validation_field
from pipeline.project import main_checkout
from pipeline.registry import open_registry
from pipeline.training.modelcard import InferenceModel, load_for_inference

__all__ = ["Args", "run", "test_accuracy", "promotion_decision"]
log = get_logger(__name__)


@dataclass
class Args:
    dataset: Path
    model: Path
    evaluation: Path
    decision: Path
    validation: Path | None = validation_field()


def test_accuracy(model: InferenceModel, dataset: Path, batch_size: int = 256) -> float:
    """Accuracy of a model on the dataset's test split (labels compared by class name).

    Args:
        model: a loaded model.
        dataset: the dataset directory.
        batch_size: images per forward pass.
    Returns:
        The accuracy in [0, 1].
    """
    correct = total = 0
    batch: list[tuple[Any, str]] = []
    for row, data in progress(iter_records(dataset, split="test"), desc="test accuracy", unit="img"):
        batch.append((decode_rgb(data), row["label"]))
        if len(batch) == batch_size:
            correct, total = _score(model, batch, correct, total)
            batch = []
    if batch:
        correct, total = _score(model, batch, correct, total)
    if total == 0:
        raise ValueError(f"{dataset}: the test split is empty; nothing to compare models on")
    return correct / total


def _score(model: InferenceModel, batch: list, correct: int, total: int) -> tuple[int, int]:
    names, _ = model.predict([image for image, _ in batch])
    hits = np.array(names) == np.array([label for _, label in batch])
    return correct + int(hits.sum()), total + len(batch)


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
    candidate = load_for_inference(args.model, device)
    classes = read_classes(args.dataset)
    new_accuracy = test_accuracy(candidate, args.dataset)
    champion = registry.champion()
    champion_accuracy, same_model = None, False
    if champion is not None:
        with tempfile.TemporaryDirectory() as scratch:
            champion_model = load_for_inference(registry.model_dir(champion["version"], Path(scratch)), device)
            same_model = champion_model.card["state_dict_sha256"] == candidate.card["state_dict_sha256"]
            if sorted(champion_model.classes) == sorted(classes):
                champion_accuracy = test_accuracy(champion_model, args.dataset)
    promoted, reason = promotion_decision(verdict, new_accuracy, champion, champion_accuracy, same_model, cfg.margin)
    run = _run_identity(root)
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


def _run_identity(root: Path) -> dict[str, Any]:
    """The run this promotion belongs to: its name (the run branch `runs/<name>`) and future tag."""
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip()
    if branch.startswith("runs/"):
        name = branch.removeprefix("runs/")
        return {"run_name": name, "run_tag": f"run-{name}"}
    return {"run_name": time.strftime("%Y%m%d-%H%M%S-manual", time.gmtime()), "run_tag": None}
