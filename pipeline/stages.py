"""The stage registry: names in chain order, the module that owns each, and its declared paths.

A stage module exposes ``Args`` (a dataclass: ``Path`` fields are input/output paths, ``bool`` fields
are flags) and ``run(params, args) -> dict`` (a small JSON-able summary). The CLI, DVC (through the
CLI) and the Prefect flow all call that one ``run``. Stages whose module is ``None`` are planned but
not built yet: calling them is an error, never a fake output.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["StageSpec", "STAGES", "get_stage", "NotImplementedStage"]


class NotImplementedStage(RuntimeError):
    """The stage is part of the design but its module has not been built yet."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of the chain."""

    name: str
    summary: str
    module: str | None  # dotted module path, or None while the stage is not built yet
    issue: int  # the issue that builds it

    @property
    def implemented(self) -> bool:
        return self.module is not None

    def load(self) -> ModuleType:
        """Import the stage module (lazily: torch and friends load only when a stage runs)."""
        if self.module is None:
            raise NotImplementedStage(f"stage '{self.name}' is not implemented yet (planned in issue #{self.issue}); "
                                      "nothing was written")
        return importlib.import_module(self.module)


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "read images from a source, pack shards, split train/val/test", None, 3),
    StageSpec("shift", "make the domain-shift 'current' set from the test split (corruptions)", None, 3),
    StageSpec("validate", "profile every image and run the Great Expectations gate", None, 4),
    StageSpec("select", "score pretrained candidates on cached features and pick one", None, 5),
    StageSpec("freeze", "write the freeze plan: frozen blocks, per-group learning rates", None, 6),
    StageSpec("finetune", "train by the freeze plan; checkpoints, resume, curves", None, 6),
    StageSpec("baseline", "train the same architecture from scratch on the same budget", None, 7),
    StageSpec("evaluate", "transfer vs scratch: accuracy, label efficiency, robustness, verdict", None, 7),
    StageSpec("drift", "calibrated drift test and Evidently report on the current set", None, 8),
    StageSpec("promote", "promote the model to champion only when it earns it", None, 9),
)

_BY_NAME = {spec.name: spec for spec in STAGES}


def get_stage(name: str) -> StageSpec:
    """Return a stage by name, or raise listing the valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r} (stages: {', '.join(_BY_NAME)})") from None
