"""A run's candidate through the registry (pipeline/promotion/candidate.py): registered, compared again when
another run promotes meanwhile, a transient error when the champion keeps changing, and a rerun after the swap
finishing the job; on a real folder with real classifiers (the promote stage end to end:
tests/test_promotion_blessing.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.common.errors import TransientError
from pipeline.config import validate_params
from pipeline.data.shards import read_classes
from pipeline.models import LoadedModel
from pipeline.promotion.candidate import Candidate, promote_candidate
from pipeline.registry import ChampionChanged, Registry, open_registry
from tests.support.heads import MODEL, SIZE, train_head
from tests.support.promotion import ingest_folder, photo_class_folder

pytestmark = pytest.mark.slow  # trains heads on real photo crops
RUN = {"run_name": "20260102-000000-candidate", "run_tag": None}
RIVAL = "20260101-000000-rival"
EVALUATION = {"verdict": "positive", "recommended_model": "finetuned", "recommended_reason": "test"}


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    yield
    logging.getLogger("tlops").handlers.clear()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Any]:
    """A three-class folder, a head trained on it (the candidate) and an untrained head (another run's model)."""
    root = tmp_path_factory.mktemp("candidate")
    dataset = ingest_folder(photo_class_folder(root / "imgs",
                                               {"rocket": ["rocket"], "gravel": ["gravel"], "coffee": ["coffee"]}, 40),
                            root)
    rival = LoadedModel.pretrained(MODEL, 3, SIZE, classes=read_classes(dataset), seed=7).save(root / "rival", {})
    return {"dataset": dataset, "model": train_head(dataset, root / "m0"), "rival": rival}


def _params(registry: Path):
    return validate_params({"common": {"image_size": SIZE},
                            "promote": {"registry": str(registry), "min_eval_per_class": 5}})


def _candidate(work: dict[str, Any]) -> Candidate:
    return Candidate.of_run(work["model"], work["dataset"], EVALUATION, torch.device("cpu"))


class _Raced(Registry):
    """A registry where another run crowns its model while this one compares (once)."""

    raced = False

    def set_champion(self, version: str, record: dict[str, Any], token: str | None, **kwargs: Any) -> dict[str, Any]:
        if not self.raced:
            self.raced = True
            _, current = self.champion_and_token()
            super().set_champion(RIVAL, {"test_accuracy": None}, current, reason="another run promoted")
        return super().set_champion(version, record, token, **kwargs)


class _Contested(Registry):
    """A registry whose champion another run replaces during every comparison."""

    def set_champion(self, version: str, record: dict[str, Any], token: str | None, **kwargs: Any) -> dict[str, Any]:
        raise ChampionChanged(f"{self.location}: another run promoted")


def test_a_champion_crowned_during_the_comparison_is_compared_against_in_turn(work, tmp_path):
    opened = open_registry(str(tmp_path / "registry"), tmp_path)
    opened.register(RIVAL, work["rival"], {"decision": "promoted"})
    registry = _Raced(opened.store, opened.location)
    decision = promote_candidate(registry, _candidate(work), RUN, _params(tmp_path / "registry"),
                                 torch.device("cpu"))
    assert decision["promoted"] is True and decision["previous_champion"] == RIVAL, decision["reason"]
    assert decision["version"] == RUN["run_name"] and decision["candidate"] == "finetuned"
    assert decision["blessing"]["evaluation_set"]["champion_data"].startswith("none: the champion's version was "
                                                                               "registered without a data record")
    assert registry.champion()["version"] == RUN["run_name"]
    assert [e["version"] for e in registry.history()] == [RIVAL, RUN["run_name"]]
    assert registry.card(RUN["run_name"]) == decision


def test_a_champion_that_keeps_changing_is_transient_and_stays_untouched(work, tmp_path):
    opened = open_registry(str(tmp_path / "registry"), tmp_path)
    registry = _Contested(opened.store, opened.location)
    with pytest.raises(TransientError, match="the champion kept changing during 5 comparisons"):
        promote_candidate(registry, _candidate(work), RUN, _params(tmp_path / "registry"), torch.device("cpu"))
    assert registry.champion() is None and registry.versions() == [RUN["run_name"]]  # registered once


def test_a_rerun_after_the_swap_finds_its_version_champion(work, tmp_path):
    registry = open_registry(str(tmp_path / "registry"), tmp_path)
    params = _params(tmp_path / "registry")
    first = promote_candidate(registry, _candidate(work), RUN, params, torch.device("cpu"))
    assert first["promoted"] is True and first["previous_champion"] is None, first["reason"]
    assert promote_candidate(registry, _candidate(work), RUN, params, torch.device("cpu")) == first
    assert [e["version"] for e in registry.history()] == [RUN["run_name"]]  # no second move
