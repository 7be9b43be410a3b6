"""The drift decision on small references, on images other than the digits: false alarms, what it catches,
and whether the detectable share it states is honest.

    python -m bench.bench_drift_small [--draws 200] [--references 10 30 100] [--current 30]

Data: grayscale crops of two scikit-image photographs ("chelsea", "brick"; the tests' photo set), 32 px,
embedded by pretrained efficientnet_lite0; a logistic-regression head fitted on a disjoint third stands in
for the fine-tuned model. Each draw takes a reference and a current batch, disjoint, from the other two
thirds (the held-back slice of the same distribution), then:
* no shift: the false-positive rate at alpha 0.05 (should stay at or below alpha at every size);
* heavy noise (gaussian_noise 5) on every current image: the detection rate;
* a share f of the current batch replaced by its noisy copies: the detection rate per f, against the
  detectable share the decision states for those sizes (it claims: below it, a flag is unlikely).
Outputs: JSON lines and bench/results/bench_drift_small.json.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.report import BenchReport
from pipeline.common.logs import progress
from pipeline.drift.detector import detect

MODEL = "efficientnet_lite0"
PHOTOS = ("chelsea", "brick")
SHARES = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def _pool(per_class: int) -> dict[str, np.ndarray]:
    import io

    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from pipeline.models import LoadedModel
    from pipeline.shift.corruptions import corrupt
    from tests.support.photos import photo_crops

    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        images += [Image.open(io.BytesIO(d)).convert("RGB") for d in photo_crops(name, per_class, rng, 32)]
        labels += [label] * per_class
    model = LoadedModel.pretrained(MODEL, 0, 32)
    clean = model.embed(model.image_batches(images), desc="embed clean")
    noisy = model.embed(model.image_batches([corrupt(im, "gaussian_noise", 5, seed=i) for i, im in enumerate(images)]),
                        desc="embed noisy")
    order = np.random.default_rng(1).permutation(len(images))
    head_rows, pool_rows = order[: len(order) // 3], order[len(order) // 3:]
    head = LogisticRegression(max_iter=2000, C=0.5).fit(clean[head_rows], np.array(labels)[head_rows])
    return {"clean": clean[pool_rows], "noisy": noisy[pool_rows], "clean_probs": head.predict_proba(clean[pool_rows]),
            "noisy_probs": head.predict_proba(noisy[pool_rows])}


def _draw(pool: dict[str, np.ndarray], n_ref: int, n_cur: int, share: float, rng: np.random.Generator,
          seed: int, permutations: int):
    rows = rng.permutation(len(pool["clean"]))
    ref, cur = rows[:n_ref], rows[n_ref:n_ref + n_cur]
    shifted = np.zeros(n_cur, dtype=bool)
    shifted[: int(round(share * n_cur))] = True
    emb = np.where(shifted[:, None], pool["noisy"][cur], pool["clean"][cur])
    probs = np.where(shifted[:, None], pool["noisy_probs"][cur], pool["clean_probs"][cur])
    return detect(pool["clean"][ref], emb, pool["clean_probs"][ref], probs, alpha=0.05, permutations=permutations,
                  seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--references", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--current", type=int, default=30)
    parser.add_argument("--permutations", type=int, default=200)
    ns = parser.parse_args(argv)
    report = BenchReport("bench_drift_small")
    pool = _pool(per_class=150)
    for n_ref in ns.references:
        if n_ref + ns.current > len(pool["clean"]):
            continue
        stated = []
        for share in progress((0.0, *SHARES), f"n_reference={n_ref}", unit="share"):
            rng = np.random.default_rng(n_ref)
            decisions = [_draw(pool, n_ref, ns.current, share, rng, seed, ns.permutations) for seed in range(ns.draws)]
            rate = float(np.mean([d.drift_detected for d in decisions]))
            stated.append(float(np.mean([d.detectable_share for d in decisions])))
            report.emit(n_reference=n_ref, n_current=ns.current, noisy_share=share,
                        kind="false_positive_rate" if share == 0 else "detection_rate", rate=round(rate, 3),
                        draws=ns.draws, stated_detectable_share=round(stated[-1], 3))
    report.save()


if __name__ == "__main__":
    main()
