"""Benchmark of the evaluation library: metrics against scikit-learn, attack cost against clean inference.

    python -m bench.bench_evaluate

Rows: (1) classification_metrics (confusion, per-class P/R/F1, macro-F1, ECE) on n predictions,
against scikit-learn's confusion_matrix + precision_recall_fscore_support measured in the same run
(time ratio, and the largest F1 difference, which must be ~0); (2) FGSM accuracy at k epsilons and
one adversarial pair on efficientnet_lite0 at 64 px, against a clean forward pass over the same
images (cost ratio). Figures are saved to bench/results/evaluate.json.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from bench.report import BenchReport
from pipeline.evaluation.interpret import PixelModel, adversarial_pair, fgsm_accuracy
from pipeline.evaluation.metrics import classification_metrics
from pipeline.models import LoadedModel


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_metrics(report: BenchReport, n: int = 200_000, classes: int = 10) -> None:
    """classification_metrics vs scikit-learn on n random predictions."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes, n)
    names = [str(c) for c in range(classes)]
    ours_s, ours = _timed(lambda: classification_metrics(probs, labels, names))
    pred = probs.argmax(axis=1)
    ref_s, ref = _timed(lambda: (sk_confusion(labels, pred), precision_recall_fscore_support(labels, pred,
                                                                                             zero_division=0)))
    f1_diff = max(abs(ours["per_class"][str(c)]["f1"] - ref[1][2][c]) for c in range(classes))
    report.emit(case="metrics", n=n, ours_s=round(ours_s, 4), sklearn_s=round(ref_s, 4),
                ratio_vs_sklearn=round(ours_s / ref_s, 2), max_f1_diff=round(f1_diff, 6), includes_ece=True)


def bench_attacks(report: BenchReport, images: int = 64, size: int = 64) -> None:
    """FGSM and an adversarial pair on lite0 against a clean forward pass."""
    torch.manual_seed(0)
    loaded = LoadedModel.pretrained("efficientnet_lite0", 10, size)
    model = PixelModel(loaded.network, loaded.preprocessing).eval()
    x, y = torch.rand(images, 3, size, size), torch.randint(0, 10, (images,))
    with torch.no_grad():
        clean_s, predicted = _timed(lambda: model(x).argmax(1), repeats=2)
    eps = [0.0, 0.004, 0.008, 0.016]
    fgsm_s, _ = _timed(lambda: fgsm_accuracy(model, x, y, eps, batch_size=images), repeats=2)
    pair_s, pair = _timed(lambda: adversarial_pair(model, x[0], int(predicted[0]), 0.002, 100), repeats=1)
    report.emit(case="fgsm", images=images, size=size, epsilons=len(eps), clean_s=round(clean_s, 3),
                fgsm_s=round(fgsm_s, 3), ratio_vs_clean=round(fgsm_s / clean_s, 2))
    report.emit(case="adversarial_pair", steps=pair["steps"], flipped=pair["flipped"], linf=pair["linf"],
                seconds=round(pair_s, 3), ratio_vs_clean_batch=round(pair_s / clean_s, 2))


def main() -> None:
    report = BenchReport("evaluate")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bench_metrics(report)
    bench_attacks(report)
    report.save()


if __name__ == "__main__":
    main()
