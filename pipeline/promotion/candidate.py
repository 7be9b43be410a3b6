"""A run's candidate through the registry: registered as a version, and made champion only when blessed.

The candidate is the model the evaluation recommends (pipeline/registry.py ``run_candidate``), decided
against the current champion by :func:`pipeline.promotion.decide.decide`. Every candidate is registered
as a version with its card, decision and data record (its test images and the hashes it trained on, for
later blessings); only a promotion moves the champion pointer (one atomic write), so a failed or
rejected run never touches the current champion. The pointer moves only if the champion is still the
one compared against; when another run promoted meanwhile, the comparison is made again with its model.
A rerun after a crash anywhere in here finds its version registered and finishes the job.
"""

from __future__ import annotations

import tempfile
import time
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.common.errors import TransientError
from pipeline.common.faults import kill_point
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.models import LoadedModel
from pipeline.models.loaded import read_card
from pipeline.promotion.decide import decide
from pipeline.promotion.evalset import DataRecord
from pipeline.registry import DATA, ChampionChanged, Registry

__all__ = ["Candidate", "promote_candidate"]
log = get_logger(__name__)
_ATTEMPTS = 5  # comparisons with a champion that another run keeps replacing, before giving up (transient)


@dataclass
class Candidate:
    """A run's candidate: the model, the folder registered for it, its run's data record and the evaluation
    that recommended it."""

    model: LoadedModel
    folder: Path  # the model's directory, or the export bundle of the same weights
    data: DataRecord
    evaluation: dict[str, Any]  # the evaluate stage's metrics: verdict, recommended_model, recommended_reason
    extras: list[Path] = field(default_factory=list)  # stored with the version (the model card)

    @classmethod
    def of_run(cls, model_dir: Path, dataset: os.PathLike, evaluation: dict[str, Any], device: torch.device,
               exports: Path | None = None, model_card: Path | None = None) -> "Candidate":
        """The candidate of a run: the model in ``model_dir``, registered as the export bundle ``exports`` when
        given (the same model with its serving files), with the data record of ``dataset``."""
        model = LoadedModel.load(model_dir, device)
        folder = model_dir if exports is None else _same_model(exports, model)
        return cls(model, folder, DataRecord.of_dataset(dataset), evaluation,
                   [model_card] if model_card is not None else [])


def _same_model(bundle: Path, candidate: LoadedModel) -> Path:
    """The export bundle, once its card names the candidate's weights (an export of another model never
    reaches the registry under this run's name)."""
    exported = read_card(bundle)
    if exported["state_dict_sha256"] != candidate.card["state_dict_sha256"]:
        raise ValueError(f"{bundle}: exports another model than the candidate {candidate.name} "
                         f"({exported['state_dict_sha256'][:12]} vs {candidate.card['state_dict_sha256'][:12]}); "
                         "re-run the export stage")
    return bundle


def promote_candidate(registry: Registry, candidate: Candidate, run: dict[str, Any], params: Params,
                      device: torch.device) -> dict[str, Any]:
    """Decide, register and (maybe) promote a run's candidate.

    Args:
        registry: the model registry.
        candidate: the run's candidate.
        run: the run's identity (``run_name``, the version's name; ``run_tag``), copied into the decision.
        params: validated params (``promote``, ``freeze.probe_cs``, ``common.seed``).
        device: where the candidate and the champion run.
    Returns:
        The decision (what decision.json holds).
    Raises:
        TransientError: the champion kept changing during every comparison.
    """
    evaluation = candidate.evaluation
    base = {"verdict": evaluation["verdict"], "candidate": evaluation["recommended_model"],
            "candidate_reason": evaluation.get("recommended_reason", ""), "registry": registry.location, **run}
    with tempfile.TemporaryDirectory() as scratch:
        data = candidate.data.write(Path(scratch) / DATA)
        for attempt in range(1, _ATTEMPTS + 1):
            champion, token = registry.champion_and_token()
            if champion is not None and champion["version"] == run["run_name"]:  # a rerun after a crash past the swap
                decision = registry.card(run["run_name"])
                log.info("promotion: this run's version is already the champion (an earlier attempt promoted it)")
                break
            decision = _register(registry, candidate, champion, data, base, params, device)
            if not decision["promoted"] or _crown(registry, decision, token):
                break
            log.warning("promotion: the champion changed during the comparison (attempt %d of %d); comparing "
                        "again", attempt, _ATTEMPTS)
        else:
            raise TransientError(f"{registry.location}: the champion kept changing during {_ATTEMPTS} comparisons")
    kill_point("promote.swapped")  # the pointer moved, the decision not yet written
    (log.info if decision["promoted"] else log.warning)("promotion: %s (%s)", decision["decision"], decision["reason"])
    return decision


def _register(registry: Registry, candidate: Candidate, champion: dict | None, data: Path, base: dict[str, Any],
              params: Params, device: torch.device) -> dict[str, Any]:
    """The decision against ``champion``; the candidate registered under the run's name unless it is the
    champion's model already (idempotent: a rerun after a crash finds its version registered)."""
    decided = decide(candidate.model, candidate.data, champion, registry, device, params, candidate.data.directory)
    version = None if decided.pop("same_model") else base["run_name"]
    decision = {**base, **decided, "version": version}
    if version is not None:
        registry.register(version, candidate.folder, decision, extras=candidate.extras, data=data)
    kill_point("promote.registered")
    return decision


def _crown(registry: Registry, decision: dict[str, Any], token: str | None) -> bool:
    """Point the champion at the decision's version if it is still the one compared against (``token``);
    False when another run promoted meanwhile."""
    try:
        registry.set_champion(decision["version"], {"test_accuracy": decision["test_accuracy"],
                                                    "run_tag": decision["run_tag"], "reason": decision["reason"],
                                                    "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                              token, reason=f"{decision['decision']}: {decision['reason']}")
        return True
    except ChampionChanged:  # compare again, with its model
        return False
