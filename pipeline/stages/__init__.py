"""The stages, one thin module each, and the table of them in chain order.

A stage module exposes ``Args`` (a dataclass: ``Path`` fields are input/output paths, ``bool`` fields
are flags) and ``run(params, args) -> dict`` (a small JSON-able summary); the work lives in the
library packages it calls (pipeline/data, validation, shift, selection, freezing, training,
evaluation, drift, models). The CLI, DVC (through the CLI) and the Prefect flow all call that one ``run``.
A stage that can run as several processes also exposes ``launch(params, argv)`` (finetune: torchrun when
``finetune.nproc_per_node`` > 1); the CLI calls it after reading the params. Every stage after validate
starts with protocol.py's ``use_validated`` (stop on a failed gate; read the dataset without its quarantine).
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
    StageSpec("ingest", "read images from a source, pack shards, split train/val/test", "pipeline.stages.ingest"),
    StageSpec("validate", "profile every image and run the Great Expectations gate", "pipeline.stages.validate"),
    StageSpec("shift", "make the domain-shift 'current' set (corrupted test split or a new batch)",
              "pipeline.stages.shift"),
    StageSpec("select", "score pretrained candidates on cached features and pick one", "pipeline.stages.select"),
    StageSpec("freeze", "write the freeze plan: frozen blocks, per-group learning rates", "pipeline.stages.freeze"),
    StageSpec("finetune", "train by the freeze plan; checkpoints, resume, curves", "pipeline.stages.finetune"),
    StageSpec("baseline", "the same architecture from scratch: on every label and at the curve's budgets",
              "pipeline.stages.baseline"),
    StageSpec("evaluate", "transfer vs scratch: accuracy, label efficiency, robustness, verdict",
              "pipeline.stages.evaluate"),
    StageSpec("drift", "calibrated drift test and Evidently report on the current set", "pipeline.stages.drift"),
    StageSpec("export", "the candidate as TorchScript and ONNX, each checked against PyTorch on test images",
              "pipeline.stages.export"),
    StageSpec("card", "the model card: intended use, data, metrics with intervals, verdict, limitations",
              "pipeline.stages.card"),
    StageSpec("promote", "promote the model to champion only when it earns it", "pipeline.stages.promote"),
)

_BY_NAME = {spec.name: spec for spec in STAGES}


def get_stage(name: str) -> StageSpec:
    """Return a stage by name, or raise listing the valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r} (stages: {', '.join(_BY_NAME)})") from None
