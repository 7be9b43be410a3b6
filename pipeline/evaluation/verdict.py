"""The transfer verdict: ``positive``, ``no_gain`` or ``negative``, decided from intervals over seeds.

The rule (docs/evaluate.md), applied to each label budget of the label-efficiency curve, where each
side has a mean accuracy and a confidence interval over seeds:

- ``positive``: the transfer interval lies wholly above the scratch interval;
- ``negative``: the scratch interval lies wholly above the transfer interval;
- ``no_gain``: the intervals overlap (the data cannot tell them apart), or transfer leads by less
  than ``min_gain``.

Across budgets: ``negative`` when any budget is negative (the promotion gate must see a budget where
the pretrained weights hurt), else ``positive`` when any budget is positive, else ``no_gain``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.common.logs import get_logger

__all__ = ["VERDICTS", "compare_intervals", "overall_verdict", "announce"]

VERDICTS = ("positive", "no_gain", "negative")
log = get_logger(__name__)


def compare_intervals(transfer: Mapping[str, float], scratch: Mapping[str, float], min_gain: float = 0.0) -> str:
    """Verdict at one budget from two ``{"mean", "low", "high"}`` intervals.

    Args:
        transfer: interval of the transfer model's accuracy.
        scratch: interval of the scratch model's accuracy.
        min_gain: smallest lead of the transfer mean that counts as a gain (0 = any separated lead).
    Returns:
        One of VERDICTS.
    """
    for name, side in (("transfer", transfer), ("scratch", scratch)):
        if not side["low"] <= side["mean"] <= side["high"]:
            raise ValueError(f"{name} interval is not ordered low <= mean <= high: {dict(side)}")
    if scratch["low"] > transfer["high"]:
        return "negative"
    if transfer["low"] > scratch["high"] and transfer["mean"] - scratch["mean"] >= min_gain:
        return "positive"
    return "no_gain"


def overall_verdict(per_budget: Sequence[str]) -> str:
    """Combine the per-budget verdicts: any negative wins, then any positive, else no_gain.

    Args:
        per_budget: one verdict per label budget.
    Returns:
        One of VERDICTS.
    """
    unknown = [v for v in per_budget if v not in VERDICTS]
    if unknown or not per_budget:
        raise ValueError(f"per-budget verdicts must be a non-empty list of {VERDICTS}, got {list(per_budget)}")
    if "negative" in per_budget:
        return "negative"
    return "positive" if "positive" in per_budget else "no_gain"


def announce(verdict: str, detail: str) -> None:
    """Log the verdict; a negative one is printed loudly (a banner on the warning channel).

    Args:
        verdict: one of VERDICTS.
        detail: the plain-language reason, e.g. the budget where scratch won.
    """
    if verdict == "negative":
        bar = "!" * 78
        log.warning("\n%s\n!! NEGATIVE TRANSFER: the from-scratch model beats the pretrained one.\n!! %s\n%s",
                    bar, detail, bar)
    else:
        log.info("transfer verdict: %s (%s)", verdict, detail)
