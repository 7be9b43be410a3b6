"""Transferability scores on frozen features: LogME, kNN accuracy, linear probe, with bootstrap CIs.

LogME (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021) is the log marginal evidence per sample of a Bayesian linear model from the
features to each one-hot label column, maximised over the prior/noise precisions (alpha, beta) by the
paper's fixed-point iteration, averaged over classes. Higher is better; it needs no training.
kNN and linear-probe accuracies are out-of-fold (stratified k-fold) on the sample.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["logme", "knn_predictions", "linear_probe_predictions", "bootstrap_ci", "subsample_ci", "cv_splitter"]


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 11) -> float:
    """LogME score of features for a classification task.

    Args:
        features: [N, D] embeddings.
        labels: [N] integer class labels.
        max_iter: fixed-point iterations per class (the paper's code: converges in 2-3, capped at 11).
    Returns:
        Mean over classes of the maximised log evidence per sample.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, sing = _thin_svd(f)
    return float(np.mean([_class_evidence((labels == c).astype(np.float64), u, sing, n, d, max_iter)
                          for c in np.unique(labels)]))


def _thin_svd(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The evidence needs only F's nonzero singular values and left singular vectors. Eigen-decompose
    # the smaller Gram matrix (N x N or D x D): cheaper than an SVD of F, and than the reference code's
    # D x D decomposition when N < D (the usual case: a few hundred images, 1280-d features).
    n, d = f.shape
    if n <= d:
        sigma, u = np.linalg.eigh(f @ f.T)
    else:
        sigma, v = np.linalg.eigh(f.T @ f)
    keep = sigma > sigma.max(initial=0.0) * 1e-10
    sing = np.sqrt(sigma[keep])
    u = u[:, keep] if n <= d else (f @ v[:, keep]) / sing
    return u, sing


def _class_evidence(target: np.ndarray, u: np.ndarray, sing: np.ndarray, n: int, d: int, max_iter: int) -> float:
    sigma = sing ** 2  # eigenvalues of F^T F (the other d - k are zero)
    proj = sing * (u.T @ target)  # V^T F^T y
    alpha, beta, eps = 1.0, 1.0, 1e-5
    lam = alpha / beta
    for _ in range(max_iter):
        gamma = (sigma / (sigma + lam)).sum()
        coeff = beta * proj / (alpha + beta * sigma)  # posterior mean m in the V basis
        m_sq = (coeff ** 2).sum()
        residual = ((target - u @ (sing * coeff)) ** 2).sum()
        alpha, beta = gamma / (m_sq + eps), (n - gamma) / (residual + eps)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < 0.01:
            break
        lam = new_lam
    log_det = np.log(alpha + beta * sigma).sum() + (d - sigma.size) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det - beta / 2 * residual
                - alpha / 2 * m_sq - n / 2 * np.log(2 * np.pi))
    return evidence / n


def cv_splitter(labels: np.ndarray, folds: int, seed: int):
    """Stratified k-fold (shuffled with ``seed``), with k capped by the smallest class.

    Raises:
        ValueError: a class has fewer than 2 samples, so no fold split exists.
    """
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.unique(labels, return_counts=True)[1].min()) if labels.size else 0
    if smallest < 2:
        raise ValueError(f"cross-validation needs >= 2 samples per class; the smallest class has {smallest}")
    return StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)


def knn_predictions(features: np.ndarray, labels: np.ndarray, k: int, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions of a cosine kNN classifier.

    Args:
        features: [N, D] embeddings.
        labels: [N] labels.
        k: neighbours (capped by the training fold size).
        folds: cross-validation folds.
        seed: fold shuffling seed.
    Returns:
        [N] predicted labels.
    """
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    cv = cv_splitter(labels, folds, seed)
    k = max(1, min(k, len(labels) - len(labels) // cv.n_splits - 1))
    return cross_val_predict(KNeighborsClassifier(n_neighbors=k, metric="cosine"), features, labels, cv=cv)


def linear_probe_predictions(features: np.ndarray, labels: np.ndarray, folds: int, seed: int,
                             c: float = 1.0) -> np.ndarray:
    """Out-of-fold predictions of a logistic-regression probe on standardised features.

    Args:
        features: [N, D] embeddings.
        labels: [N] labels.
        folds: cross-validation folds.
        seed: fold shuffling seed.
        c: inverse L2 regularisation strength.
    Returns:
        [N] predicted labels.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # tol 1e-3: same out-of-fold accuracy as 1e-4 on lite0 digit features at an eighth of the time.
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, tol=1e-3, max_iter=500))
    return cross_val_predict(probe, features, labels, cv=cv_splitter(labels, folds, seed))


def bootstrap_ci(values: np.ndarray, rounds: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-sample values (scipy.stats.bootstrap).

    Args:
        values: one value per sample (e.g. 1.0 where an out-of-fold prediction is right).
        rounds: bootstrap resamples (0 gives a (nan, nan) interval).
        seed: resampling seed.
        level: interval coverage.
    Returns:
        (low, high).
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if rounds <= 0:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:  # every resample has the same mean
        return float(values[0]), float(values[0])
    result = bootstrap((values,), np.mean, n_resamples=rounds, confidence_level=level, method="percentile",
                       random_state=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def subsample_ci(statistic: Callable[[np.ndarray], float], n: int, rounds: int, seed: int,
                 level: float = 0.95, fraction: float = 0.5) -> tuple[float, float]:
    """Confidence interval from m-out-of-n subsampling without replacement (Politis & Romano 1994).

    For statistics that repeated rows distort: LogME on a with-replacement resample sees duplicates
    as perfectly fitted points and jumps far above the full-sample value. The spread of the statistic
    over half-size subsets, scaled by sqrt(m / n), gives the interval around the full-sample value
    (centred on the subsets' mean, since LogME also drifts with the sample size).

    Args:
        statistic: maps an index array (distinct rows) to the statistic.
        n: number of rows.
        rounds: subsamples (0 gives a (nan, nan) interval).
        seed: sampling seed.
        level: interval coverage.
        fraction: subsample size m / n.
    Returns:
        (low, high).
    """
    if rounds <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    m = max(2, int(n * fraction))
    full = statistic(np.arange(n))
    values = np.array([statistic(np.sort(rng.choice(n, m, replace=False))) for _ in range(rounds)])
    deviations = (values - values.mean()) * np.sqrt(m / n)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(deviations, [tail, 100 - tail])
    return float(full + low), float(full + high)
