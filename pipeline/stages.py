"""The stage registry: names in chain order, the module that owns each, and its declared paths.

A stage module exposes ``Args`` (a dataclass: ``Path`` fields are input/output paths, ``bool`` fields
are flags) and ``run(params, args) -> dict`` (a small JSON-able summary). The CLI, DVC (through the
CLI) and the Prefect flow all call that one ``run``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["StageSpec", "STAGES", "get_stage"]


@dataclass(frozen=True)
class StageSpec:
    """One stage of the chain."""

    name: str
    summary: str
    module: str  # dotted module path

    def load(self) -> ModuleType:
        """Import the stage module (lazily: torch and friends load only when a stage runs)."""
        return importlib.import_module(self.module)


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "read images from a source, pack shards, split train/val/test", "pipeline.ingest"),
    StageSpec("validate", "profile every image and run the Great Expectations gate", "pipeline.validate"),
    StageSpec("shift", "make the domain-shift 'current' set from the test split (corruptions)", "pipeline.shift"),
    StageSpec("select", "score pretrained candidates on cached features and pick one", "pipeline.select"),
    StageSpec("freeze", "write the freeze plan: frozen blocks, per-group learning rates", "pipeline.freeze"),
    StageSpec("finetune", "train by the freeze plan; checkpoints, resume, curves", "pipeline.finetune"),
    StageSpec("baseline", "train the same architecture from scratch on the same budget", "pipeline.baseline"),
    StageSpec("evaluate", "transfer vs scratch: accuracy, label efficiency, robustness, verdict", "pipeline.evaluate"),
    StageSpec("drift", "calibrated drift test and Evidently report on the current set", "pipeline.drift.stage"),
    StageSpec("promote", "promote the model to champion only when it earns it", "pipeline.promote"),
)

_BY_NAME = {spec.name: spec for spec in STAGES}


def get_stage(name: str) -> StageSpec:
    """Return a stage by name, or raise listing the valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r} (stages: {', '.join(_BY_NAME)})") from None
