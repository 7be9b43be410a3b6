"""The freeze plan: phases of (frozen depth, per-block learning rates, epochs), built by strategy name.

Strategies are small compositions of one phase builder (itself a use of ``freeze_to``'s depth):

- ``linear_probe``: everything below the head frozen, a new head solved to the optimum of a
  logistic regression on the frozen features (its penalty chosen on val among ``probe_cs``).
- ``partial``: the first ``depth`` blocks frozen.
- ``full``: nothing frozen.
- ``gradual``: head first, then one more block (``gradual_step``) every ``gradual_every`` epochs,
  down to ``depth`` frozen blocks.
- ``lp_ft``: a linear probe, then a fine-tune of the blocks above ``depth`` starting from that head.

``auto`` (:func:`auto_choice`) picks the strategy, the depth and the BatchNorm policy from the
images per class and how well the pretrained features already separate the classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.common.io import read_json, write_json
from pipeline.config import FreezeParams
from pipeline.freezing.blocks import BN_POLICIES, block_lrs

__all__ = ["Phase", "FreezePlan", "DataStats", "build_phases", "auto_choice", "make_plan", "load_plan"]

# The auto rule's thresholds (documented in docs/finetune.md).
PROBE_ONLY_BELOW = 10  # images per class: fewer than this and adapting any backbone block overfits
FULL_DATA_PER_CLASS = 1000  # images per class at which the data alone justifies unfreezing everything
BN_STATS_FROM = 500  # images per class from which BatchNorm statistics may adapt


@dataclass
class Phase:
    """One stretch of training with a fixed set of frozen blocks."""

    name: str
    epochs: int
    n_frozen: int
    lrs: dict[str, float]  # trainable block -> learning rate
    frozen_blocks: list[str] = field(default_factory=list)
    trainable_params: int = 0
    # Only the head trains on a fixed backbone: its features can be computed once and cached.
    cacheable: bool = False
    # The linear probe: solved (no epochs, no learning rate) at each of these inverse penalties, val picks.
    probe_cs: list[float] = field(default_factory=list)


@dataclass
class DataStats:
    """What the auto rule looks at."""

    train_images: int
    num_classes: int
    probe_accuracy: float | None = None  # selection's probe accuracy of the chosen model on the val split

    @property
    def per_class(self) -> float:
        return self.train_images / max(self.num_classes, 1)

    @property
    def similarity(self) -> float | None:
        """Probe accuracy rescaled so chance is 0 and perfect is 1: how close the pretrained domain is."""
        if self.probe_accuracy is None:
            return None
        chance = 1.0 / max(self.num_classes, 2)
        return min(max((self.probe_accuracy - chance) / (1 - chance), 0.0), 1.0)


@dataclass
class FreezePlan:
    """What ``tlops freeze`` writes and ``tlops finetune`` follows."""

    model: str
    strategy: str
    requested: str
    blocks: list[str]
    bn_policy: str
    phases: list[Phase]
    block_params: list[int]
    why: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # the selection's weights: uri and sha256
    probe_cs: list[float] = field(default_factory=list)  # penalties every linear probe of this model is solved at

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-able dict (with the largest trainable parameter count on top)."""
        out = asdict(self)
        out["trainable_params"] = max(p.trainable_params for p in self.phases)
        out["total_params"] = sum(self.block_params)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the plan atomically as JSON."""
        return write_json(path, self.to_json())


def load_plan(path: str | Path) -> FreezePlan:
    """Read a freeze plan written by :meth:`FreezePlan.save`, naming the file and key when it is bad."""
    raw = read_json(path)
    try:
        phases = [Phase(**p) for p in raw["phases"]]
        plan = FreezePlan(**{k: raw[k] for k in ("model", "strategy", "requested", "blocks", "bn_policy",
                                                 "block_params", "why")},
                          phases=phases, data=raw.get("data", {}), weights=raw.get("weights", {}),
                          probe_cs=raw.get("probe_cs", []))
    except KeyError as err:
        raise ValueError(f"{path}: freeze plan lacks key {err.args[0]!r} (re-run `tlops freeze`)") from None
    except TypeError as err:
        raise ValueError(f"{path}: malformed freeze plan phase ({err})") from None
    if plan.bn_policy not in BN_POLICIES:
        raise ValueError(f"{path}: bn_policy = {plan.bn_policy!r} is not one of {', '.join(BN_POLICIES)}")
    if not plan.phases:
        raise ValueError(f"{path}: freeze plan has no phases")
    return plan


def _phase(name: str, epochs: int, n_frozen: int, lr: float, blocks: Sequence[str], decay: float,
           block_params: Sequence[int]) -> Phase:
    return Phase(name=name, epochs=epochs, n_frozen=n_frozen, lrs=block_lrs(blocks, n_frozen, lr, decay),
                 frozen_blocks=list(blocks[:n_frozen]), trainable_params=sum(block_params[n_frozen:]),
                 cacheable=n_frozen == len(blocks) - 1)


def build_phases(strategy: str, depth: int, cfg: FreezeParams, blocks: Sequence[str],
                 block_params: Sequence[int]) -> list[Phase]:
    """The phases of a named strategy.

    Args:
        strategy: linear_probe, partial, full, gradual or lp_ft.
        depth: blocks kept frozen while fine-tuning (partial; floor of gradual and lp_ft).
        cfg: the ``freeze`` params (epochs, learning rates, decay, gradual schedule).
        blocks: ordered block names, head last.
        block_params: parameter count of each block.
    Returns:
        The phases in training order.
    """
    head_only = len(blocks) - 1
    if not 0 <= depth <= head_only:
        raise ValueError(f"freeze.depth = {depth}: must be between 0 and {head_only} for {len(blocks)} blocks")

    def make(name: str, epochs: int, n_frozen: int, lr: float) -> Phase:
        return _phase(name, epochs, n_frozen, lr, blocks, cfg.layer_decay, block_params)

    probe = Phase(name="linear_probe", epochs=1, n_frozen=head_only, lrs={}, frozen_blocks=list(blocks[:head_only]),
                  trainable_params=block_params[head_only], cacheable=True, probe_cs=list(cfg.probe_cs))
    if strategy == "linear_probe":
        return [probe]
    if strategy in ("partial", "full"):
        return [make(strategy, cfg.epochs, depth if strategy == "partial" else 0, cfg.lr)]
    if strategy == "lp_ft":
        return [probe, make("finetune", cfg.epochs, depth, cfg.lr)]
    if strategy == "gradual":
        depths = list(range(head_only, depth, -cfg.gradual_step)) + [depth]
        steps = [make(f"unfreeze_{head_only - d}", cfg.gradual_every, d, cfg.lr) for d in depths]
        steps[-1].epochs = max(cfg.epochs - cfg.gradual_every * (len(steps) - 1), cfg.gradual_every)
        return steps
    raise ValueError(f"freeze.strategy = {strategy!r}: not one of linear_probe, partial, full, gradual, lp_ft")


def auto_choice(stats: DataStats, n_blocks: int) -> tuple[str, int, str, list[str]]:
    """The auto rule: strategy, frozen depth and BatchNorm policy from data size and domain similarity.

    Little data and a similar domain -> freeze more; more data or a distant domain -> unfreeze more.
    The fine-tune always starts from a trained linear probe (LP-FT), so it cannot do worse than
    the probe at the start of fine-tuning, and early stopping keeps the better of the two.

    Args:
        stats: training images, classes and the selection's probe accuracy.
        n_blocks: number of blocks, head included.
    Returns:
        (strategy, depth, bn_policy, reasons as sentences).
    """
    body = n_blocks - 1
    per_class = stats.per_class
    bn = "eval_all" if per_class < BN_STATS_FROM else "frozen"
    why = [f"{stats.train_images} training images over {stats.num_classes} classes = {per_class:.0f} per class"]
    if per_class < PROBE_ONLY_BELOW:
        why.append(f"fewer than {PROBE_ONLY_BELOW} images per class: only a new head is trained (linear probe)")
        return "linear_probe", body, bn, why
    data = min(math.log10(per_class) / math.log10(FULL_DATA_PER_CLASS), 1.0)
    similarity = stats.similarity
    distance = 0.5 if similarity is None else 1.0 - similarity
    unfreeze = min(max(0.5 * data + 0.5 * distance, 1.0 / body), 1.0)
    depth = body - max(1, round(unfreeze * body))
    why += [
        f"data factor {data:.2f} = log(per class) / log({FULL_DATA_PER_CLASS}), capped at 1",
        "domain distance " + (f"{distance:.2f} = 1 - probe accuracy above chance ({stats.probe_accuracy:.3f})"
                              if similarity is not None else "0.50 (no selection probe score)"),
        f"unfreeze fraction {unfreeze:.2f} = (data + distance) / 2: the top {body - depth} of {body} "
        f"backbone blocks are fine-tuned after a linear probe (LP-FT)",
        f"BatchNorm: {bn} ({'<' if bn == 'eval_all' else '>='} {BN_STATS_FROM} images per class)",
    ]
    return "lp_ft", depth, bn, why


def make_plan(cfg: FreezeParams, model: str, blocks: Sequence[str], block_params: Sequence[int],
              stats: DataStats, weights: dict[str, Any] | None = None) -> FreezePlan:
    """Resolve ``auto`` (strategy, depth, BatchNorm policy) and build the full plan.

    Args:
        cfg: the ``freeze`` params.
        model: the model name (from the selection stage).
        blocks: ordered block names, head last.
        block_params: parameter count of each block.
        stats: the data the auto rule looks at.
        weights: the pretrained weights the selection scored (uri, sha256), recorded for finetune.
    Returns:
        The freeze plan.
    """
    if len(blocks) < 2:
        raise ValueError(f"model {model!r} declares {len(blocks)} block(s): need a backbone and a head")
    strategy, depth, bn, why = auto_choice(stats, len(blocks))
    if cfg.strategy != "auto":
        strategy = cfg.strategy
        why = [f"strategy {strategy!r} set in params (freeze.strategy)"]
        depth = 0
        if strategy == "partial" and cfg.depth is None:
            raise ValueError("freeze.strategy = 'partial' needs freeze.depth (how many blocks stay frozen)")
    if cfg.depth is not None:
        depth = cfg.depth
        why.append(f"depth {depth} set in params (freeze.depth)")
    if cfg.bn_policy != "auto":
        bn = cfg.bn_policy
        why.append(f"BatchNorm policy {bn!r} set in params (freeze.bn_policy)")
    elif cfg.strategy != "auto":
        bn = "eval_all" if stats.per_class < BN_STATS_FROM else "frozen"
    phases = build_phases(strategy, depth, cfg, blocks, block_params)
    return FreezePlan(model=model, strategy=strategy, requested=cfg.strategy, blocks=list(blocks), bn_policy=bn,
                      phases=phases, block_params=list(block_params), why=why,
                      data={"train_images": stats.train_images, "num_classes": stats.num_classes,
                            "per_class": round(stats.per_class, 2), "probe_accuracy": stats.probe_accuracy},
                      weights=dict(weights or {}), probe_cs=list(cfg.probe_cs))
