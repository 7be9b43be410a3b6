"""The blessing: the checks a candidate passes, on the evaluation set's images, before it becomes champion.

Every check is paired: the candidate, the champion and the trivial references answer for the same
images (pipeline/promotion/evalset.py), scored by the same code.

1. ``evidence``: every class has at least ``promote.min_eval_per_class`` images; else the decision is
   ``insufficient evidence`` whatever the other checks say (a few images never decide);
2. ``references``: the candidate beats each trivial reference (the majority class; a logistic regression
   on raw pixels unless ``promote.pixel_reference`` is false) by the paired test: more images right,
   exact McNemar p < ``promote.alpha``; so a first model at chance is never crowned;
3. ``non_inferiority`` (with a champion): the paired accuracy difference's interval (confidence
   1 - ``promote.alpha``) rules out a loss larger than ``promote.non_inferiority``;
4. ``per_class`` (with a champion): no class's recall falls by more than ``promote.max_class_drop``;
5. ``gain`` (with a champion): the mean gain is at least ``promote.margin`` and, with
   ``promote.superiority`` (the default), significant by the paired test.

Outcome: ``insufficient evidence`` when 1 fails; else ``refused`` when 2, 3 or 4 fails; else ``kept
champion`` when only 5 fails (as good, not better: a retrain of the same recipe with another seed);
else ``promoted``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.config import PromoteParams
from pipeline.evaluation.intervals import PAIRED_TEST, paired_comparison

__all__ = ["REFERENCES", "bless", "blessing_markdown", "check_rows"]
REFERENCES = {"majority_class": "majority class", "pixel_logistic_regression": "pixel logistic regression"}


def _check(name: str, passed: bool, detail: str, **numbers: Any) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "detail": detail, **numbers}


def _p(value: float) -> str:
    """A p-value as people read it (the paired test rounds to 6 decimals)."""
    return "p < 1e-06" if value == 0 else f"p = {value:.3g}"


def _beats(test: dict[str, Any], alpha: float) -> bool:
    """The paired test says A is better than B: more images right only by A, exact McNemar p < alpha."""
    return test["a_only"] > test["b_only"] and test["p_value"] < alpha


def _paired(labels: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: PromoteParams, seed: int) -> dict[str, Any]:
    return paired_comparison(a == labels, b == labels, confidence=1 - cfg.alpha, seed=seed)


def _evidence(labels: np.ndarray, classes: Sequence[str], cfg: PromoteParams) -> dict[str, Any]:
    counts = {name: int((labels == name).sum()) for name in classes}
    short = {name: n for name, n in counts.items() if n < cfg.min_eval_per_class}
    if short:
        named = ", ".join(f"'{name}' {n}" for name, n in sorted(short.items(), key=lambda item: item[1]))
        detail = (f"{len(short)} of {len(classes)} classes have fewer than promote.min_eval_per_class = "
                  f"{cfg.min_eval_per_class} evaluation images ({named})")
    else:
        detail = (f"every class has at least {cfg.min_eval_per_class} evaluation images "
                  f"(fewest: {min(counts.values()) if counts else 0}; {len(labels)} in all)")
    return _check("evidence", not short, detail, images=len(labels), per_class=counts, short=short)


def _references(labels: np.ndarray, candidate: np.ndarray, references: dict[str, np.ndarray], cfg: PromoteParams,
                seed: int) -> dict[str, Any]:
    tests, lost = {}, []
    for name, predicted in references.items():
        test = _paired(labels, candidate, predicted, cfg, seed)
        tests[name] = test
        if not _beats(test, cfg.alpha):
            lost.append(f"{REFERENCES.get(name, name)} {test['accuracy_b']:.4f} (candidate {test['accuracy_a']:.4f}, "
                        f"{_p(test['p_value'])})")
    if lost:
        detail = f"does not beat the trivial reference by the paired test at alpha {cfg.alpha}: {'; '.join(lost)}"
    else:
        detail = "beats " + "; ".join(f"{REFERENCES.get(name, name)} {t['accuracy_b']:.4f} ({_p(t['p_value'])})"
                                      for name, t in tests.items())
    return _check("references", not lost, detail, tests=tests)


def _per_class(labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray, classes: Sequence[str],
               cfg: PromoteParams) -> dict[str, Any]:
    recalls, dropped = {}, []
    for name in classes:
        mask = labels == name
        n = int(mask.sum())
        if n == 0:
            continue
        ours, theirs = int((candidate[mask] == name).sum()), int((champion[mask] == name).sum())
        recalls[name] = {"n": n, "candidate": ours, "champion": theirs, "drop": round((theirs - ours) / n, 4)}
        if (theirs - ours) / n > cfg.max_class_drop:
            dropped.append(f"class '{name}': recall {ours}/{n} ({ours / n:.2f}) against the champion's "
                           f"{theirs}/{n} ({theirs / n:.2f})")
    detail = (f"recall falls by more than promote.max_class_drop = {cfg.max_class_drop}: {'; '.join(dropped)}"
              if dropped else f"no class's recall falls by more than {cfg.max_class_drop}")
    return _check("per_class", not dropped, detail, recalls=recalls)


def bless(labels: np.ndarray, candidate: np.ndarray, references: dict[str, np.ndarray],
          champion: np.ndarray | None, classes: Sequence[str], cfg: PromoteParams, seed: int = 0) -> dict[str, Any]:
    """Run the checks of the module docstring on per-image class names.

    Args:
        labels: the evaluation set's true class names.
        candidate: the candidate's predicted class names, same order.
        references: name -> the trivial reference's predicted class names.
        champion: the champion's predicted class names, or None (no champion to compare with).
        classes: the candidate's classes.
        cfg: the ``promote`` params.
        seed: the bootstrap seed.
    Returns:
        ``{"outcome", "reason", "checks": [...], "champion_comparison": paired test or None, "method"}``.
    """
    labels, candidate = np.asarray(labels, dtype=object), np.asarray(candidate, dtype=object)
    checks = [_evidence(labels, classes, cfg)]
    comparison = None
    if len(labels):
        checks.append(_references(labels, candidate, references, cfg, seed))
    if champion is not None and len(labels):
        champion = np.asarray(champion, dtype=object)
        comparison = _paired(labels, candidate, champion, cfg, seed)
        diff = comparison["difference"]
        checks.append(_check("non_inferiority", diff["low"] > -cfg.non_inferiority,
                             f"accuracy difference {diff['mean']:+.4f}, interval [{diff['low']:+.4f}, "
                             f"{diff['high']:+.4f}] against the largest loss allowed, -{cfg.non_inferiority}"))
        checks.append(_per_class(labels, candidate, champion, classes, cfg))
        significant = _beats(comparison, cfg.alpha)
        gained = diff["mean"] >= cfg.margin and (significant or not cfg.superiority)
        checks.append(_check("gain", gained,
                             f"gain {diff['mean']:+.4f} against promote.margin {cfg.margin}"
                             + (f"; paired test {_p(comparison['p_value'])}: "
                                f"{'a' if significant else 'no'} significant gain at alpha {cfg.alpha} "
                                "(promote.superiority)" if cfg.superiority else "")))
    outcome, reason = _outcome(checks, comparison is not None)
    return {"outcome": outcome, "reason": reason, "checks": checks, "champion_comparison": comparison,
            "method": PAIRED_TEST}


def _outcome(checks: list[dict[str, Any]], compared: bool) -> tuple[str, str]:
    """(outcome, reason) of the checks, by the rule of the module docstring (``compared``: with a champion)."""
    failed = {c["check"]: c for c in checks if not c["passed"]}
    if "evidence" in failed:
        return "insufficient evidence", failed["evidence"]["detail"]
    if failed.keys() - {"gain"}:
        return "refused", "; ".join(f"{name}: {c['detail']}" for name, c in failed.items() if name != "gain")
    if failed:
        return "kept champion", f"as good as the champion, not better: {failed['gain']['detail']}"
    return "promoted", (f"{checks[-1]['detail']}; {checks[1]['detail']}" if compared
                        else f"no champion to compare with; {checks[1]['detail']}")


def check_rows(decision: dict[str, Any]) -> list[dict[str, str]]:
    """(check, passed, detail) rows of a decision's blessing, for a table artifact or the card."""
    blessing = decision.get("blessing") or {}
    return [{"check": c["check"], "passed": "yes" if c["passed"] else "NO", "detail": c["detail"]}
            for c in blessing.get("checks", [])]


def blessing_markdown(decision: dict[str, Any]) -> str:
    """The blessing of a decision as a Markdown section (the model card's and the run summary's)."""
    evalset = (decision.get("blessing") or {}).get("evaluation_set", {})
    lines = ["## Promotion checks", "",
             f"**{decision.get('decision')}**: {decision.get('reason')}", ""]
    if evalset:
        excluded = ", ".join(f"{n} trained on by the {side}" for side, n in evalset.get("excluded_trained_on",
                                                                                       {}).items())
        sources = ", ".join(f"{n} from the {side}'s test split" for side, n in evalset.get("from", {}).items())
        lines += [f"Evaluation set: {evalset.get('images')} images ({sources}); left out: "
                  f"{evalset.get('duplicates', 0)} duplicates, {excluded or 'none trained on'}; "
                  f"champion's data: {evalset.get('champion_data')}.", ""]
    rows = check_rows(decision)
    if rows:
        lines += ["| check | passed | detail |", "|---|---|---|"]
        lines += [f"| {r['check']} | {r['passed']} | {r['detail'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines) + "\n"
