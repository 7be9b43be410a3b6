"""The calibrated detector: false-positive rate near alpha on no-shift splits, power on a real shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.drift.detector import combine, detect, ks_softmax_test, median_bandwidth, mmd_permutation_test

ALPHA = 0.05


def _mixture_pool(n: int = 1200, dims: int = 48, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed Gaussian mixture with class structure: embeddings and softmax outputs of a linear 'model'."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(classes, dims))
    labels = rng.integers(0, classes, n)
    emb = centres[labels] + rng.normal(size=(n, dims)) * rng.uniform(0.5, 1.5, dims)
    logits = emb @ centres.T / dims
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return emb, probs / probs.sum(1, keepdims=True)


def _split_alarms(emb: np.ndarray, trials: int, n_ref: int, n_cur: int, split_seed: int,
                  probs: np.ndarray | None = None, **kwargs) -> int:
    """Alarms on ``trials`` random reference/current splits of one pool (no shift between them)."""
    rng = np.random.default_rng(split_seed)
    alarms = 0
    for trial in range(trials):
        order = rng.permutation(len(emb))
        ref, cur = order[:n_ref], order[n_ref:n_ref + n_cur]
        softmax = (probs[ref], probs[cur]) if probs is not None else ()
        alarms += detect(emb[ref], emb[cur], *softmax, seed=trial, **kwargs).drift_detected
    return alarms


def _no_shift_alarms(trials: int, n_ref: int, n_cur: int, **kwargs) -> int:
    emb, probs = _mixture_pool()
    return _split_alarms(emb, trials, n_ref, n_cur, 123, probs, alpha=ALPHA, **kwargs)


def _upper(trials: int) -> int:
    """Alarms above this on `trials` no-shift splits have probability < 0.001 if the FPR is alpha."""
    return int(stats.binom.ppf(0.999, trials, ALPHA))


@pytest.mark.slow
def test_false_positive_rate_stays_near_alpha_on_no_shift_splits():
    trials = 100
    alarms = _no_shift_alarms(trials, n_ref=200, n_cur=50, permutations=200, pca_dims=16)
    assert alarms <= _upper(trials), f"{alarms}/{trials} false alarms at alpha {ALPHA}"


@pytest.mark.slow
def test_mmd_alone_is_calibrated_and_not_vacuous():
    emb, _ = _mixture_pool()
    trials = 100
    alarms = _split_alarms(emb, trials, 150, 100, 7, permutations=200, pca_dims=16)
    # Upper: never far above alpha. Lower: a test that never fires would also "pass" the upper bound.
    assert stats.binom.ppf(0.001, trials, ALPHA) <= alarms <= _upper(trials), f"{alarms}/{trials}"


def test_detects_a_strong_corruption():
    emb, probs = _mixture_pool()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(emb))
    ref, cur = order[:300], order[300:400]
    # Heavy corruption washes out class evidence and moves every embedding the same way.
    corrupted = 0.6 * emb[cur] + rng.normal(0, 1.0, size=emb.shape[1])
    decision = detect(emb[ref], corrupted, alpha=ALPHA, permutations=200, pca_dims=16)
    assert decision.drift_detected and decision.tests[0].effect_size > 5


def test_ks_on_softmax_detects_label_shift_and_is_bonferroni_corrected():
    emb, probs = _mixture_pool()
    top = probs.argmax(1)
    ref = probs[:400]
    shifted = probs[400:][top[400:] < 3][:100]  # only three classes arrive: a label shift
    result = ks_softmax_test(ref, shifted)
    assert result.p_value < 1e-6 and result.effect_size > 0.3
    raw = min(stats.ks_2samp(ref[:, c], shifted[:, c]).pvalue for c in range(probs.shape[1]))
    assert result.p_value == pytest.approx(min(1.0, probs.shape[1] * raw))


def test_identical_distributions_give_large_p_and_seed_reproduces():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(size=(40, 5))
    first = mmd_permutation_test(x, y, permutations=300, seed=3)
    assert first == mmd_permutation_test(x, y, permutations=300, seed=3)
    assert first.p_value > 0.01 and (first.n_reference, first.n_current) == (60, 40)


def test_combine_is_bonferroni_over_tests():
    emb, probs = _mixture_pool()
    decision = detect(emb[:100], emb[100:160], probs[:100], probs[100:160], permutations=100, pca_dims=8)
    assert decision.p_value == pytest.approx(min(1.0, 2 * min(t.p_value for t in decision.tests)))
    assert set(decision.to_dict()["tests"]) == {"mmd", "ks_softmax"}


def test_sizes_reported_are_the_sizes_tested():
    emb, _ = _mixture_pool()
    decision = detect(emb[:900], emb[900:], max_samples=250, permutations=50, pca_dims=8)
    assert (decision.tests[0].n_reference, decision.tests[0].n_current) == (250, 250)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd_permutation_test(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same C"):
        ks_softmax_test(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="drift.alpha"):
        combine([mmd_permutation_test(np.eye(4), np.eye(4) + 1, permutations=10)], alpha=1.5)
    with pytest.raises(ValueError, match="no drift test ran"):
        detect(None, None)
    assert median_bandwidth(np.zeros((5, 2))) == 1.0


@pytest.fixture(scope="module")
def digit_embeddings():
    """Pretrained efficientnet_lite0 embeddings of 300 real digits, clean and with heavy noise."""
    from pipeline.data.images import decode_rgb
    from pipeline.data.sources.digits import DigitsSource
    from pipeline.models import LoadedModel
    from pipeline.shift.corruptions import corrupt, corruption_seed

    records = list(DigitsSource(32).records())[:300]
    clean = [decode_rgb(r.data) for r in records]
    noisy = [corrupt(im, "gaussian_noise", 5, corruption_seed(0, r.source_path, "gaussian_noise", 5))
             for im, r in zip(clean[250:], records[250:])]
    model = LoadedModel.pretrained("efficientnet_lite0", 0, 32)
    return model.embed(model.image_batches(clean)), model.embed(model.image_batches(noisy))


@pytest.mark.slow
def test_calibrated_and_powerful_on_real_pretrained_embeddings(digit_embeddings):
    clean, noisy = digit_embeddings
    trials = 40
    alarms = _split_alarms(clean, trials, 200, 50, 11, permutations=200, pca_dims=16)
    assert alarms <= _upper(trials), f"{alarms}/{trials} false alarms on clean digit splits"
    decision = detect(clean[:250], noisy, permutations=200, pca_dims=16)
    assert decision.drift_detected, decision.to_dict()
