"""One promotion decision: a candidate against the model an alias points at (the champion), blessed on the
evaluation set; used by the promote stage and by `tlops registry promote`."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Params, PromoteParams
from pipeline.models import LoadedModel
from pipeline.promotion.blessing import bless
from pipeline.promotion.evalset import (DataRecord, evaluation_set, majority_reference, pixel_reference,
                                        predicted_classes)
from pipeline.registry import DATA, Registry

__all__ = ["decide", "class_change"]


def decide(candidate: LoadedModel, candidate_data: DataRecord, champion: dict | None, registry: Registry,
           device: torch.device, params: Params, pixel_dataset: os.PathLike | None) -> dict[str, Any]:
    """The decision's fields for a candidate against ``champion`` (its pointer record, or None).

    Args:
        candidate: the candidate model.
        candidate_data: its data record (test images, images it trained on).
        champion: the pointer record of the model it would replace, or None.
        registry: where the champion's model and data record are.
        device: where both models run.
        params: validated params (``promote``, ``freeze.probe_cs``, ``common.seed``).
        pixel_dataset: the candidate's dataset directory, to fit the pixel reference on its training labels
            (None: no pixel reference, e.g. a registered version whose training images are not kept).
    Returns:
        decision, promoted, reason, task_change, test_accuracy, champion_test_accuracy, previous_champion,
        same_model, blessing (checks, evaluation_set, params).
    """
    cfg = params.promote
    with tempfile.TemporaryDirectory(prefix="tlops-champion-") as scratch:  # the champion's model and test images
        side = _champion_side(champion, candidate, registry, Path(scratch), device)
        images = evaluation_set(candidate_data, candidate.classes, side.data, side.note)
        predicted = predicted_classes(candidate, images)
        references = {"majority_class": majority_reference(images)} if len(images) else {}
        if len(images) and cfg.pixel_reference and pixel_dataset is not None:
            references["pixel_logistic_regression"] = pixel_reference(pixel_dataset, images, params.freeze.probe_cs)
        compared = side.model is not None and side.change is None and not side.same_model
        champion_predicted = predicted_classes(side.model, images) if compared else None
    blessing = bless(images.labels, predicted, references, champion_predicted, candidate.classes, cfg,
                     params.common.seed)
    decision, promoted, reason = _outcome(blessing, side, cfg)
    return {"decision": decision, "promoted": promoted, "reason": reason, "task_change": side.change,
            "test_accuracy": _accuracy(predicted, images.labels),
            "champion_test_accuracy": _accuracy(champion_predicted, images.labels),
            "previous_champion": side.version, "same_model": side.same_model,
            "blessing": {**blessing, "evaluation_set": images.record, "params": cfg.model_dump()}}


@dataclass
class _ChampionSide:
    """What the champion brings to a decision: its version and model (None without a champion), the change of
    task against the candidate (None: the same classes), whether it is the candidate's model, its data record
    (None: not used or not kept) and what the evaluation set's record says of it."""

    version: str | None = None
    model: LoadedModel | None = None
    change: str | None = None
    same_model: bool = False
    data: DataRecord | None = None
    note: str = "none: no champion yet"


def _champion_side(champion: dict | None, candidate: LoadedModel, registry: Registry, scratch: Path,
                   device: torch.device) -> _ChampionSide:
    """The champion's side, its version fetched into ``scratch`` (its test images are read from there)."""
    if champion is None:
        return _ChampionSide()
    folder = registry.model_dir(champion["version"], scratch)
    model = LoadedModel.load(folder, device)
    change = class_change(model.classes, candidate.classes)
    data = DataRecord.of_version(folder / DATA) if change is None else None
    note = ("not used: a change of task (the champion's classes differ)" if change is not None
            else "registered" if data is not None
            else "none: the champion's version was registered without a data record, so the images it "
                 "trained on are unknown; compared on the candidate's test images only")
    same_model = model.card["state_dict_sha256"] == candidate.card["state_dict_sha256"]
    return _ChampionSide(champion["version"], model, change, same_model, data, note)


def _outcome(blessing: dict[str, Any], side: _ChampionSide, cfg: PromoteParams) -> tuple[str, bool, str]:
    """(decision, promoted, reason): the blessing's outcome, unless the candidate is the champion's model
    already or a change of task the params do not allow."""
    if side.same_model:
        return "kept champion", False, f"this model is already the champion ({side.version})"
    if side.change is not None and not cfg.allow_task_change:
        return "refused: task change", False, (
            f"refused: {side.change} ({side.version}); a model for another task replaces the champion only "
            "with promote.allow_task_change: true")
    outcome, reason = blessing["outcome"], blessing["reason"]
    failed = [c["check"] for c in blessing["checks"] if not c["passed"]]
    decision = f"refused: {', '.join(failed)}" if outcome == "refused" else outcome
    if side.change is not None:
        reason = f"task change allowed by promote.allow_task_change: {side.change}; {reason}"
    return decision, outcome == "promoted", reason


def _accuracy(predicted: np.ndarray | None, labels: np.ndarray) -> float | None:
    return None if predicted is None or not len(labels) else round(float((predicted == labels).mean()), 4)


def class_change(champion: list[str], candidate: list[str]) -> str | None:
    """None when both models know the same classes; else which classes the candidate adds and drops."""
    added, removed = sorted(set(candidate) - set(champion)), sorted(set(champion) - set(candidate))
    if not added and not removed:
        return None
    parts = ([f"adds {added}"] if added else []) + ([f"drops {removed}"] if removed else [])
    return f"the candidate's classes differ from the champion's: it {' and '.join(parts)}"
