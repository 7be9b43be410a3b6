"""The reference a drift check compares with: which images, how many, and what that size can detect.

``drift.reference_split`` picks the images. ``train+val`` gives more reference rows than val alone,
but the model has fitted its training images: on them its softmax is overconfident (and a fine-tuned
backbone clusters their embeddings), which reads as drift on any fresh data. The over-confidence guard
measures that on this model: train against val with the decision's own tests. Each test takes train
rows into its reference only when that check finds no difference at alpha; otherwise it uses val alone,
and the report says which rows each test used and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import DriftParams
from pipeline.drift.inputs import SetOutputs
from pipeline.drift.detector import detect_with, ks_detectable_share

__all__ = ["Reference", "choose_reference", "size_warnings", "detectable_table"]
_TABLE_SIZES = (25, 50, 100, 200, 500, 1000)


@dataclass
class Reference:
    """Reference rows per test: those whose embeddings the MMD uses (also the rows the reports show),
    and those whose softmax outputs the KS test uses."""

    embedding_rows: SetOutputs
    softmax_rows: SetOutputs
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def embeddings(self) -> np.ndarray:
        return self.embedding_rows.embeddings

    @property
    def probs(self) -> np.ndarray:
        return self.softmax_rows.probs


def choose_reference(outputs: SetOutputs, cfg: DriftParams, seed: int) -> Reference:
    """The reference rows of each test, with the over-confidence guard when train is in the reference.

    Args:
        outputs: the reference set's outputs (its manifest has a ``split`` column).
        cfg: ``params.drift``.
        seed: ``common.seed``.
    Returns:
        The rows per test and ``info``: splits, sizes per test, and the guard's p-values and choice.
    """
    splits = cfg.reference_split.split("+")
    info: dict[str, Any] = {"split": cfg.reference_split, "n": len(outputs.manifest)}
    if "train" not in splits or len(splits) == 1:
        info.update(embeddings_from=cfg.reference_split, softmax_from=cfg.reference_split)
        return Reference(outputs, outputs, info)
    # The images the model was fitted on: train rows inside the label budget (out-of-budget train rows
    # were never seen, so they sit with val on the held-out side).
    manifest = outputs.manifest
    fitted = ((manifest["split"] == "train") & manifest.get("in_budget", True).astype(bool)).to_numpy()
    held_out = np.flatnonzero(~fitted)
    if len(held_out) < 2 or fitted.sum() < 2:
        raise ValueError(f"drift.reference_split = {cfg.reference_split!r}: the over-confidence guard needs >= 2 "
                         f"fitted train and >= 2 held-out images, got {int(fitted.sum())} and {len(held_out)}")
    train, other = outputs.subset(np.flatnonzero(fitted)), outputs.subset(held_out)
    p_values = {t.name: t.p_value for t in detect_with(cfg, train.embeddings, other.embeddings, train.probs,
                                                        other.probs, seed).tests}
    rest = "held-out images"
    embeddings_pool, softmax_pool = p_values["mmd"] >= cfg.alpha, p_values["ks_softmax"] >= cfg.alpha
    info.update(
        embeddings_from=cfg.reference_split if embeddings_pool else rest,
        softmax_from=cfg.reference_split if softmax_pool else rest,
        guard={"embeddings_p": p_values["mmd"], "softmax_p": p_values["ks_softmax"], "alpha": cfg.alpha,
               "n_train": int(fitted.sum()), "n_held_out": len(held_out),
               "says": _guard_words(embeddings_pool, softmax_pool, rest, p_values["mmd"], p_values["ks_softmax"])})
    return Reference(outputs if embeddings_pool else other, outputs if softmax_pool else other, info)


def _guard_words(embeddings_pool: bool, softmax_pool: bool, rest: str, p_emb: float, p_soft: float) -> str:
    def part(name: str, pooled: bool, p: float) -> str:
        if pooled:
            return f"{name}: the fitted train images look like the {rest} (p = {p:.3g}), so they join the reference"
        return (f"{name}: the fitted train images differ from the {rest} (p = {p:.3g}: the model fits its own "
                f"training images), so the {rest} alone")
    return "; ".join([part("embeddings", embeddings_pool, p_emb), part("softmax", softmax_pool, p_soft)])


def size_warnings(n_reference: int, n_current: int, detectable: float | None, cfg: DriftParams) -> list[str]:
    """Plain warnings about what this reference size can decide."""
    warnings = []
    if n_reference < cfg.min_reference:
        share = f" a batch is unlikely to be flagged unless at least {detectable:.0%} of its images are unlike " \
            "the reference;" if detectable is not None else ""
        advice = " use drift.reference_split: train+val, or more val images" \
            if cfg.reference_split != "train+val" else " add labelled images"
        warnings.append(f"the reference has {n_reference} images (< drift.min_reference = {cfg.min_reference}):"
                        f"{share}{advice}")
    if detectable is not None and detectable >= 1.0:
        warnings.append(f"at {n_reference} reference and {n_current} current images no test can reach alpha = "
                        f"{cfg.alpha:g} even for a batch entirely unlike the reference: the decision is blind")
    return warnings


def detectable_table(n_reference: int, n_current: int, n_outputs: int, n_tests: int, alpha: float) -> list[dict]:
    """The softmax test's detectable share at this batch size for other reference sizes (its power table)."""
    sizes = sorted({n_reference, *(s for s in _TABLE_SIZES if s > n_reference)})
    level = alpha / max(1, n_tests) / max(1, n_outputs)
    return [{"n_reference": n, "n_current": n_current,
             "detectable_share": round(ks_detectable_share(n, n_current, level), 3)} for n in sizes]
