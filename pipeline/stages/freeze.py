"""Stage ``freeze``: decide which blocks of the selected model stay frozen and at which learning rates.

Inputs: the dataset directory (training rows inside the label budget, classes), ``selection.json``
from ``tlops select`` (the chosen model, its weights and its linear-probe score).
Outputs: ``freeze_plan.json`` (strategy, phases with frozen blocks and per-block learning rates,
BatchNorm policy, trainable parameter counts, the reasons, the selection's weights) and ``metrics.json``.
Params: ``common`` and ``freeze`` (strategy ``auto`` applies the rule in pipeline/freezing/plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.io import read_json, write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.freezing.blocks import block_param_counts
from pipeline.freezing.plan import DataStats, make_plan
from pipeline.models.build import build_architecture
from pipeline.models.catalog import get_spec
from pipeline.selection.result import selected_model
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the freeze stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    selection: Path = field(metadata={"help": "selection.json written by `tlops select`"})
    plan: Path = field(metadata={"help": "freeze_plan.json to write"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict:
    """Write the freeze plan for the selected model.

    Args:
        params: validated params (reads ``common`` and ``freeze``).
        args: stage paths.
    Returns:
        Summary: strategy, frozen depth per phase, trainable parameters, plan path.
    """
    dataset = use_validated(args.dataset, args.validation)
    name, probe, weights = selected_model(read_json(args.selection), Path(args.selection))
    spec = get_spec(name)
    classes = read_classes(dataset)
    train = train_in_budget(read_manifest(dataset), dataset)
    network = build_architecture(spec)  # parameter counts only: no weights needed
    network.reset_classifier(len(classes))
    plan = make_plan(params.freeze, name, spec.blocks, block_param_counts(network, spec.blocks),
                     DataStats(len(train), len(classes), probe), weights)
    plan.save(args.plan)
    summary = {"model": name, "strategy": plan.strategy, "requested": plan.requested, "bn_policy": plan.bn_policy,
               "phases": [f"{p.name}: {p.epochs} epochs, {p.n_frozen}/{len(plan.blocks)} blocks frozen"
                          for p in plan.phases],
               "trainable_params": plan.to_json()["trainable_params"], "total_params": sum(plan.block_params)}
    write_json(args.metrics, {k: v for k, v in summary.items() if k != "phases"} |
               {"frozen_blocks_finetune": plan.phases[-1].n_frozen, "num_phases": len(plan.phases)})
    for reason in plan.why:
        log.info("freeze plan: %s", reason)
    return {**summary, "plan": str(args.plan)}
