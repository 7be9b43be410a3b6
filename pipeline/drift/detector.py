"""The calibrated drift detector: permutation MMD on embeddings plus KS on softmax outputs.

This is the "Failing Loudly" (Rabanser et al., 2019) recipe, whose false-positive rate is known
by construction and measured in tests/test_drift_detector.py:

* MMD: an RBF-kernel maximum mean discrepancy between reference and current embeddings after a PCA
  to ``pca_dims`` components, with a permutation p-value. The PCA and the median-heuristic bandwidth
  are fitted on the pooled sample, which treats reference and current rows alike, so permuting the
  labels leaves the null distribution exact (a PCA fitted on the reference alone gives reference rows
  more spread than fresh rows and inflates false alarms).
* KS (BBSD): a two-sample Kolmogorov-Smirnov test on each softmax output, Bonferroni-corrected over
  the classes.

Decision rule: Bonferroni over the tests that ran, ``p = min(1, k * min(p_i))``; drift when
``p < alpha``. So the whole decision has a false-positive rate of at most ``alpha`` at the sample
sizes actually tested (reported as ``n_reference``/``n_current``).

What a decision at those sizes can detect is reported with it, as the *detectable share*: the
smallest share of the current batch that must be unlike anything in the reference before a test can
flag it at its level. For the KS test that is its critical distance (a share f of foreign images
moves an output's distribution by at most f); for the MMD, a share f of far-away images raises MMD^2
by about f^2 times the mean reference kernel, to be compared with the null's quantile. Smaller or
subtler changes can pass unnoticed, which is what a small reference must say out loud.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from pipeline.config import DriftParams

__all__ = ["TestResult", "DriftDecision", "pca_project", "median_bandwidth", "mmd_permutation_test",
           "ks_softmax_test", "ks_detectable_share", "combine", "detect", "detect_with", "subsample", "holm"]

_PERMUTATION_CHUNK = 100  # permutations scored per matrix product: bounds memory at N x 100


@dataclass(frozen=True)
class TestResult:
    """One two-sample test: its statistic, p-value and effect size at the sizes it ran on."""

    name: str
    statistic: float
    p_value: float
    effect_size: float
    effect_name: str
    n_reference: int
    n_current: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftDecision:
    """The combined decision over the tests that ran (Bonferroni)."""

    drift_detected: bool
    alpha: float
    p_value: float
    rule: str
    tests: list[TestResult]

    @property
    def detectable_share(self) -> float | None:
        """The smallest share of foreign images any of the tests can flag at its level (None if unknown)."""
        shares = [t.details["detectable_share"] for t in self.tests if "detectable_share" in t.details]
        return min(shares) if shares else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (tests keyed by name)."""
        out = asdict(self)
        out["tests"] = {t.name: asdict(t) for t in self.tests}
        out["detectable_share"] = self.detectable_share
        return out


def subsample(x: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Return the row indices of a seeded subsample of at most ``limit`` rows (all rows, in order, if fewer)."""
    if limit is None or len(x) <= limit:
        return np.arange(len(x))
    return np.sort(rng.choice(len(x), size=limit, replace=False))


def pca_project(reference: np.ndarray, current: np.ndarray, dims: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Project both samples onto the top principal components of the pooled sample (scikit-learn's PCA).

    Args:
        reference: (n, d) reference embeddings.
        current: (m, d) current embeddings.
        dims: number of components; ``None`` or >= the rank keeps the centred input as it is.
    Returns:
        The projected reference (n, k) and current (m, k).
    """
    from sklearn.decomposition import PCA

    pooled = np.concatenate([reference, current]).astype(np.float64)
    if dims is None or dims >= min(pooled.shape):
        pooled = pooled - pooled.mean(axis=0)
    else:
        pooled = PCA(n_components=dims, svd_solver="full").fit_transform(pooled)
    return pooled[: len(reference)], pooled[len(reference):]


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(sq, 0.0)


def median_bandwidth(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic: the median pairwise distance of (up to ``max_points`` of) the rows of ``x``.

    Args:
        x: (N, k) pooled sample.
        max_points: rows used (seeded subsample) to keep this O(max_points^2).
        seed: seed of that subsample.
    Returns:
        The bandwidth sigma of the kernel ``exp(-d^2 / (2 sigma^2))`` (1.0 when all rows are equal).
    """
    rows = x[subsample(x, max_points, np.random.default_rng(seed))]
    sq = _sq_distances(rows, rows)[np.triu_indices(len(rows), k=1)]
    median = float(np.sqrt(np.median(sq))) if sq.size else 0.0
    return median if median > 0 else 1.0


def _mmd2_unbiased(kernel: np.ndarray, member: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD^2 for each column of ``member`` (1 = reference row), kernel diagonal zeroed."""
    k_member = kernel @ member
    within_ref = (member * k_member).sum(0)
    total_ref = k_member.sum(0)  # sum over reference rows of their kernel row sums
    grand = kernel.sum()
    cross = total_ref - within_ref
    within_cur = grand - 2.0 * total_ref + within_ref
    return within_ref / (n * (n - 1)) + within_cur / (m * (m - 1)) - 2.0 * cross / (n * m)


def mmd_permutation_test(reference: np.ndarray, current: np.ndarray, permutations: int = 1000,
                         seed: int = 0, bandwidth: float | None = None, level: float | None = None) -> TestResult:
    """Permutation two-sample test with an RBF-kernel MMD.

    Args:
        reference: (n, k) reference features, n >= 2.
        current: (m, k) current features, m >= 2.
        permutations: number of label permutations for the null distribution.
        seed: seed of the permutations.
        bandwidth: RBF sigma; ``None`` uses the median heuristic on the pooled sample.
        level: the level this test is judged at (alpha over the tests combined); when given, details
            hold ``detectable_share``: about the smallest share of far-away current images it flags.
    Returns:
        A TestResult: statistic = unbiased MMD^2, p = (1 + #null >= observed) / (1 + permutations),
        effect size = (MMD^2 - null mean) / null std.
    """
    n, m = len(reference), len(current)
    if n < 2 or m < 2:
        raise ValueError(f"MMD test needs at least 2 rows on each side, got reference={n}, current={m}")
    if permutations < 1:
        raise ValueError(f"drift.permutations = {permutations}: must be >= 1")
    pooled = np.concatenate([reference, current]).astype(np.float64)
    sigma = bandwidth or median_bandwidth(pooled, seed=seed)
    kernel = np.exp(-_sq_distances(pooled, pooled) / (2.0 * sigma * sigma))
    np.fill_diagonal(kernel, 0.0)
    labels = np.r_[np.ones(n), np.zeros(m)]
    observed = float(_mmd2_unbiased(kernel, labels[:, None], n, m)[0])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, permutations, _PERMUTATION_CHUNK):
        size = min(_PERMUTATION_CHUNK, permutations - start)
        member = np.stack([rng.permutation(labels) for _ in range(size)], axis=1)
        null.append(_mmd2_unbiased(kernel, member, n, m))
    null_stats = np.concatenate(null)
    p_value = (1.0 + float((null_stats >= observed).sum())) / (1.0 + permutations)
    spread = float(null_stats.std()) or 1e-12
    details = {"bandwidth": sigma, "permutations": permutations, "dims": int(pooled.shape[1])}
    if level is not None:
        # a share f of far-away rows (kernel ~0 to all) gives MMD^2 ~ f^2 * mean reference kernel
        reference_kernel = float(kernel[:n, :n].sum()) / (n * (n - 1))
        critical = max(float(np.quantile(null_stats, 1.0 - level)), 0.0)
        share = float(np.sqrt(critical / reference_kernel)) if reference_kernel > 0 else 1.0
        details["detectable_share"] = min(1.0, share)
    return TestResult("mmd", observed, p_value, (observed - float(null_stats.mean())) / spread, "mmd2_z",
                      n, m, details)


def ks_detectable_share(n: int, m: int, level: float) -> float:
    """The smallest two-sample KS distance significant at ``level`` with n and m rows (asymptotic
    critical value ``sqrt(-ln(level/2) / 2 * (n + m) / (n m))``), capped at 1.

    A share f of foreign images moves an empirical distribution by at most f, so this is also the
    smallest share of them the test can flag.
    """
    return min(1.0, float(np.sqrt(-np.log(level / 2.0) / 2.0 * (n + m) / (n * m))))


def ks_softmax_test(reference_probs: np.ndarray, current_probs: np.ndarray, level: float | None = None) -> TestResult:
    """KS test on each softmax output (BBSD), Bonferroni-corrected over the outputs.

    Args:
        reference_probs: (n, C) softmax outputs on the reference.
        current_probs: (m, C) softmax outputs on the current set.
        level: the level this test is judged at; when given, details hold ``detectable_share`` (the KS
            critical distance at ``level / C``).
    Returns:
        A TestResult: statistic = largest KS distance, p = min(1, C * min p_c),
        effect size = that largest KS distance; per-class p-values and distances in details.
    """
    if reference_probs.ndim != 2 or current_probs.ndim != 2 or reference_probs.shape[1] != current_probs.shape[1]:
        raise ValueError(f"softmax outputs must be (n, C) and (m, C) with the same C, got "
                         f"{reference_probs.shape} and {current_probs.shape}")
    n_out = reference_probs.shape[1]
    results = [stats.ks_2samp(reference_probs[:, c], current_probs[:, c]) for c in range(n_out)]
    p_values = [float(r.pvalue) for r in results]
    distances = [float(r.statistic) for r in results]
    worst = int(np.argmin(p_values))
    details: dict[str, Any] = {"p_values": p_values, "distances": distances, "worst_output": worst}
    if level is not None:
        details["detectable_share"] = ks_detectable_share(len(reference_probs), len(current_probs), level / n_out)
    return TestResult("ks_softmax", max(distances), min(1.0, n_out * p_values[worst]), max(distances), "ks_distance",
                      len(reference_probs), len(current_probs), details)


def combine(results: list[TestResult], alpha: float) -> DriftDecision:
    """Bonferroni over tests: p = min(1, k * min p_i); drift when p < alpha.

    Args:
        results: the tests that ran (at least one).
        alpha: the false-positive rate the whole decision may have.
    Returns:
        The decision.
    """
    if not results:
        raise ValueError("no drift test ran: need embeddings and/or softmax outputs")
    if not 0 < alpha < 1:
        raise ValueError(f"drift.alpha = {alpha}: must be in (0, 1)")
    p_value = min(1.0, len(results) * min(r.p_value for r in results))
    rule = (f"Bonferroni over {len(results)} test(s) ({', '.join(r.name for r in results)}): "
            f"drift when {len(results)} x min p < alpha = {alpha:g}")
    return DriftDecision(p_value < alpha, alpha, p_value, rule, list(results))


def detect(reference_emb: np.ndarray | None, current_emb: np.ndarray | None,
           reference_probs: np.ndarray | None = None, current_probs: np.ndarray | None = None, *,
           alpha: float = 0.05, permutations: int = 1000, pca_dims: int | None = 32,
           max_samples: int | None = 1000, seed: int = 0) -> DriftDecision:
    """Run the calibrated tests on whatever features are given and combine them.

    Args:
        reference_emb, current_emb: embeddings (n, d), (m, d), or None to skip the MMD test.
        reference_probs, current_probs: softmax outputs (n, C), (m, C), or None to skip the KS test.
        alpha: false-positive rate of the combined decision.
        permutations: permutations of the MMD test.
        pca_dims: PCA components before the MMD (None: no PCA).
        max_samples: rows per side for the MMD (seeded subsample; its cost grows with the square).
        seed: seed of subsampling and permutations.
    Returns:
        The decision with each test's p-value and effect size.
    """
    results = []
    run_mmd = reference_emb is not None and current_emb is not None
    run_ks = reference_probs is not None and current_probs is not None
    level = alpha / max(1, run_mmd + run_ks)  # each test's share of alpha under the Bonferroni rule
    if run_mmd:
        rng = np.random.default_rng(seed)
        ref = reference_emb[subsample(reference_emb, max_samples, rng)]
        cur = current_emb[subsample(current_emb, max_samples, rng)]
        ref, cur = pca_project(ref, cur, pca_dims)
        results.append(mmd_permutation_test(ref, cur, permutations, seed, level=level))
    if run_ks:
        results.append(ks_softmax_test(reference_probs, current_probs, level=level))
    return combine(results, alpha)


def detect_with(cfg: DriftParams, reference_emb: np.ndarray, current_emb: np.ndarray, reference_probs: np.ndarray,
                current_probs: np.ndarray, seed: int) -> DriftDecision:
    """:func:`detect` with the settings of ``params.drift`` (the stage's decision, its groups, its guard)."""
    return detect(reference_emb, current_emb, reference_probs, current_probs, alpha=cfg.alpha,
                  permutations=cfg.permutations, pca_dims=cfg.pca_dims, max_samples=cfg.max_samples, seed=seed)


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error over the list at any alpha).

    Args:
        p_values: raw p-values (e.g. one per group of the current set).
    Returns:
        Adjusted p-values in the same order.
    """
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
