"""The drift analysis of one current set against the reference: the calibrated decision, what it can
detect at these sizes, descriptor shifts, accuracy, domain-classifier effect size, per-group tests
(Holm-adjusted over the groups, so a clean control among 36 groups is not flagged by chance).

The decision is the calibrated test of :mod:`pipeline.drift.detector`, never Evidently's own flags.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import DriftParams
from pipeline.drift.describe import describe_shifts, moved_words
from pipeline.drift.inputs import SetOutputs, group_name
from pipeline.drift.outliers import domain_classifier_scores, knn_distances
from pipeline.drift.reference import Reference, choose_reference, detectable_table, size_warnings
from pipeline.drift.detector import detect_with, holm, pca_project

__all__ = ["analyse"]
_GROUP_COLUMNS = ("corruption", "severity")
_MIN_GROUP = 10  # smaller groups are listed but not tested: too few rows for a meaningful p-value


def analyse(reference: SetOutputs, current: SetOutputs, cfg: DriftParams, seed: int) -> dict[str, Any]:
    """The calibrated decision, descriptor shifts, accuracy, domain-classifier scores and per-group tests.

    Args:
        reference: reference embeddings, softmax, descriptors and manifest.
        current: the same for the current set.
        cfg: ``params.drift``.
        seed: ``common.seed``.
    Returns:
        The drift.json content (without paths), plus ``_scores`` (each current row's distance to its
        nearest reference embeddings), ``_pca`` (the reduced embeddings) and ``_reference`` (the
        reference rows those embeddings belong to) for the reports.
    """
    chosen = choose_reference(reference, cfg, seed)
    decision = _decide(chosen, current, cfg, seed)
    shifts = describe_shifts(reference.descriptors, current.descriptors, cfg.alpha, cfg.min_effect)
    ref_pca, cur_pca = pca_project(chosen.embeddings, current.embeddings, cfg.pca_dims)
    _, auc = domain_classifier_scores(ref_pca, cur_pca, seed=seed)
    # Ranking by distance to the nearest reference images needs no training, so it stays sound on
    # small sets where a domain classifier's per-image scores are noisy; the classifier's AUC is kept
    # as an effect size.
    scores = knn_distances(ref_pca, cur_pca)
    tests = decision.to_dict()["tests"]
    n_reference = min(len(chosen.embeddings), len(chosen.probs))
    detectable = decision.detectable_share
    return {
        "drift_detected": decision.drift_detected, "p_value": decision.p_value, "alpha": decision.alpha,
        "rule": decision.rule, "tests": tests,
        "p_values": {name: t["p_value"] for name, t in tests.items()},
        "effect_sizes": {name: {t["effect_name"]: t["effect_size"]} for name, t in tests.items()}
        | {"domain_classifier_auc": auc},
        "descriptors_moved": moved_words(shifts), "descriptors": [s.to_dict() for s in shifts],
        "min_effect": cfg.min_effect,
        "accuracy_reference": chosen.softmax_rows.accuracy(), "accuracy_current": current.accuracy(),
        "domain_classifier_auc": auc, "n_reference": n_reference, "n_current": len(current.manifest),
        "reference_set": chosen.info,
        "detectable": {"share": detectable,
                       "per_test": {name: t["details"].get("detectable_share") for name, t in tests.items()},
                       "by_reference_size": detectable_table(len(chosen.probs), len(current.manifest),
                                                             current.probs.shape[1], len(tests), cfg.alpha)},
        "warnings": size_warnings(n_reference, len(current.manifest), detectable, cfg),
        "groups": _group_tests(chosen, current, cfg, seed) if cfg.per_group else [],
        "_scores": scores, "_pca": (ref_pca, cur_pca), "_reference": chosen.embedding_rows,
    }


def _decide(reference: Reference, current: SetOutputs, cfg: DriftParams, seed: int, rows: Any = None) -> Any:
    cur_emb = current.embeddings if rows is None else current.embeddings[rows]
    cur_probs = current.probs if rows is None else current.probs[rows]
    return detect_with(cfg, reference.embeddings, cur_emb, reference.probs, cur_probs, seed)


def _group_tests(reference: Reference, current: SetOutputs, cfg: DriftParams, seed: int) -> list[dict[str, Any]]:
    """Test each corruption x severity group (or batch) on its own, at that group's size; the groups'
    p-values are Holm-adjusted over the groups tested, and the flag follows the adjusted one."""
    if not all(c in current.manifest.columns for c in _GROUP_COLUMNS):
        return []
    groups = []
    for (corruption, severity), rows in current.manifest.groupby(list(_GROUP_COLUMNS), sort=True).indices.items():
        entry = {"group": group_name(corruption, int(severity)), "corruption": corruption,
                 "severity": int(severity), "n": len(rows), "accuracy": current.accuracy(rows)}
        if len(rows) >= _MIN_GROUP:
            decision = _decide(reference, current, cfg, seed, rows)
            entry.update(p_value_raw=decision.p_value, detectable_share=decision.detectable_share)
        groups.append(entry)
    tested = [g for g in groups if "p_value_raw" in g]
    for group, adjusted in zip(tested, holm([g["p_value_raw"] for g in tested])):
        group.update(p_value=adjusted, drift_detected=adjusted < cfg.alpha)
    return groups

