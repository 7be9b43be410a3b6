"""The transfer verdict: ``positive``, ``no_gain``, ``negative`` or ``inconclusive``, and the comparison
that decided it. The rule (docs/evaluate.md):

Each comparison gets its own verdict:

- a label budget of the curve (transfer and scratch over seeds, each with an interval inside [0, 1]):
  ``inconclusive`` when a scratch run did not converge (it hit its cap still improving) or its
  training failed (one class predicted for every image, or no better than always answering the
  majority class); else ``positive`` when the transfer interval lies wholly above the scratch one (and
  the lead is at least ``min_gain``), ``negative`` when the scratch interval lies wholly above, else
  ``no_gain``;
- all labels and the shift set (the fine-tuned model against the scratch baseline on the same
  images, exact McNemar test): ``inconclusive`` when the baseline failed or did not converge; else
  ``positive`` / ``negative`` when the test rejects at ``alpha`` with transfer / scratch ahead, else
  ``no_gain``.

Overall: ``negative`` when scratch is ahead at any budget or with all labels; else ``inconclusive``
when any comparison is; ``positive`` when transfer is ahead somewhere and behind nowhere (the shift
set included); else ``no_gain``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.common.logs import get_logger

__all__ = ["VERDICTS", "budget_verdict", "paired_verdict", "overall_verdict", "announce"]

VERDICTS = ("positive", "no_gain", "negative", "inconclusive")
log = get_logger(__name__)


def _span(side: Mapping) -> str:
    return f"{side['mean']} [{side['low']}, {side['high']}]"


def budget_verdict(name: str, transfer: Mapping, scratch: Mapping, min_gain: float = 0.0) -> tuple[str, str]:
    """Verdict at one budget of the curve, and why.

    Args:
        name: the budget's name (``10/class``).
        transfer: the transfer side's summary: mean, low, high (intervals over seeds).
        scratch: the scratch side's summary: mean, low, high, converged, not_converged_seeds,
            failed_seeds, cap_epochs.
        min_gain: the smallest lead of the transfer mean that counts as a gain.
    Returns:
        (verdict, reason).
    """
    for side_name, side in (("transfer", transfer), ("scratch", scratch)):
        if not 0 <= side["low"] <= side["mean"] <= side["high"] <= 1:
            raise ValueError(f"{name} {side_name} interval is not an ordered accuracy interval: {dict(side)}")
    if scratch["failed_seeds"]:
        return "inconclusive", (f"at {name}: scratch training failed for seed(s) {scratch['failed_seeds']} (one class "
                                "predicted for every image, or no better than the majority class)")
    if not scratch["converged"]:
        return "inconclusive", (f"at {name}: scratch run(s) for seed(s) {scratch['not_converged_seeds']} reached the "
                                "cap while val accuracy was still rising (raise baseline.max_epochs)")
    versus = f"at {name}: transfer {_span(transfer)} vs scratch {_span(scratch)}"
    if scratch["low"] > transfer["high"]:
        return "negative", versus + ": scratch ahead, intervals separated"
    if transfer["low"] > scratch["high"] and transfer["mean"] - scratch["mean"] >= min_gain:
        return "positive", versus + ": transfer ahead, intervals separated"
    return "no_gain", versus + ": intervals overlap"


def paired_verdict(name: str, paired: Mapping, alpha: float, baseline_problem: str | None) -> tuple[str, str]:
    """Verdict of the fine-tuned model against the scratch baseline on the same images.

    Args:
        name: what was compared (``all labels (test)``, ``shift set``).
        paired: from :func:`pipeline.evaluation.intervals.paired_comparison` (a = fine-tuned, b = scratch).
        alpha: level of the test.
        baseline_problem: why the baseline cannot serve as evidence (failed, not converged), or None.
    Returns:
        (verdict, reason).
    """
    if baseline_problem:
        return "inconclusive", f"{name}: the scratch baseline {baseline_problem}"
    d = paired["difference"]
    text = (f"{name}: fine-tuned {paired['accuracy_a']} vs scratch {paired['accuracy_b']} on the same "
            f"{paired['n']} images, difference {d['mean']} [{d['low']}, {d['high']}], "
            f"McNemar p = {paired['p_value']:.3g}")
    if paired["p_value"] < alpha and d["mean"] > 0:
        return "positive", text + ": transfer ahead"
    if paired["p_value"] < alpha and d["mean"] < 0:
        return "negative", text + ": scratch ahead"
    return "no_gain", text + f": no significant difference at alpha {alpha:g}"


def overall_verdict(budgets: Sequence[Mapping], full_labels: Mapping, shift: Mapping | None) -> tuple[str, str]:
    """Combine every comparison (each a mapping with ``verdict`` and ``reason``) by the module's rule."""
    decisive = [*budgets, full_labels]
    everything = [*decisive, *([shift] if shift else [])]
    unknown = [c["verdict"] for c in everything if c["verdict"] not in VERDICTS]
    if unknown:
        raise ValueError(f"unknown verdicts {unknown}; expected one of {VERDICTS}")
    negative = next((c for c in decisive if c["verdict"] == "negative"), None)
    if negative:
        return "negative", negative["reason"]
    unsure = [c for c in everything if c["verdict"] == "inconclusive"]
    if unsure:
        return "inconclusive", "; ".join(c["reason"] for c in unsure)
    positive = [c for c in everything if c["verdict"] == "positive"]
    behind = [c for c in everything if c["verdict"] == "negative"]  # the shift set may still say scratch
    if positive and not behind:
        return "positive", positive[0]["reason"] + "; behind nowhere"
    if behind:
        return "no_gain", behind[0]["reason"] + " (so transfer is not positive)"
    return "no_gain", "no comparison separates transfer from scratch: " + full_labels["reason"]


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
