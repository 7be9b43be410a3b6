"""Power study of the drift detector ("Failing Loudly" style) and the drift report's cost at 1k vs 10k images.

    python -m bench.bench_drift [--sizes 10 25 50 200 500] [--reps 10] [--null-reps 50] [--quick]

Data: scikit-learn's real digits, split in three disjoint thirds: one trains a logistic-regression
head on pretrained efficientnet_lite0 embeddings (the stand-in for the fine-tuned model), one is the
reference, one is the pool current batches are drawn from, clean (no shift: false-positive rate) or
corrupted (pipeline.shift.corruptions: detection rate). Embeddings and descriptors are cached in
bench/results/drift_cache_<size>px.npz after the first run.
Reference measured in the same run: Evidently 0.7's own embedding-drift methods on the same no-shift
draws (their false-positive rates; ratios to ours are reported).
Outputs: JSON lines, bench/results/bench_drift.json, drift_power.md (table) and drift_power.png (plot).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import RESULTS, BenchReport
from pipeline.common.io import atomic_path, write_text
from pipeline.common.logs import progress
from pipeline.drift.detector import detect

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast")
SEVERITIES = (1, 3, 5)
MODEL = "efficientnet_lite0"


def _embed_pool(image_size: int) -> dict[str, np.ndarray]:
    """Embed every digit clean, and the current third at each corruption x severity; profile them too."""
    from pipeline.data.images import decode_rgb
    from pipeline.data.sources.digits import DigitsSource
    from pipeline.models import LoadedModel
    from pipeline.shift.corruptions import corrupt, corruption_seed
    from pipeline.validation.profile import profile_image

    records = list(DigitsSource(image_size).records())
    clean = [decode_rgb(r.data) for r in records]
    model = LoadedModel.pretrained(MODEL, 0, image_size)
    out = {"labels": np.array([int(r.label) for r in records])}
    third = 2 * len(records) // 3
    sets = {"clean": clean}
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            sets[f"{corruption}-{severity}"] = [
                corrupt(im, corruption, severity, corruption_seed(0, r.source_path, corruption, severity))
                for im, r in zip(clean[third:], records[third:])]
    for name, images in sets.items():
        out[name] = model.embed(model.image_batches(images), desc=f"embed {name}")
        out[f"desc-{name}"] = np.array([[_descriptors(profile_image(_png(im)))] for im in images])[:, 0]
    return out


def _png(image) -> bytes:
    from pipeline.shift.corruptions import encode_png

    return encode_png(image)


DESCRIPTORS = ("brightness_mean", "brightness_std", "contrast", "blur_var", "saturated_frac")


def _descriptors(row: dict) -> list[float]:
    return [float(row[name]) for name in DESCRIPTORS]


def load_pool(image_size: int) -> dict[str, np.ndarray]:
    """Cached embeddings and descriptors of the digits (computed on first use)."""
    cache = RESULTS / f"drift_cache_{image_size}px.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return dict(data)
    pool = _embed_pool(image_size)
    with atomic_path(cache, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **pool)
    return pool


class Setup:
    """The three thirds, the head trained on the first, and softmax outputs for every set."""

    def __init__(self, pool: dict[str, np.ndarray]):
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        n = len(pool["labels"])
        self.third = n // 3, 2 * n // 3
        head_rows = slice(0, self.third[0])
        self.head = LogisticRegression(max_iter=2000, C=0.5).fit(pool["clean"][head_rows], pool["labels"][head_rows])
        sets = {name: pool[name] for name in pool if not name.startswith("desc-") and name != "labels"}
        sets["clean"] = pool["clean"][self.third[1]:]
        self.probs = {name: self.head.predict_proba(emb) for name, emb in sets.items()}
        self.reference_probs = self.head.predict_proba(pool["clean"][self.third[0]:self.third[1]])
        # A fixed 128-d PCA fitted on the head's third (disjoint from reference and current, so the
        # tests stay exact) makes each of the hundreds of draws cheap; detect() then reduces further.
        basis = PCA(n_components=128, random_state=0).fit(pool["clean"][head_rows])
        self.reference = basis.transform(pool["clean"][self.third[0]:self.third[1]])
        self.sets = {name: basis.transform(emb) for name, emb in sets.items()}
        self.raw_reference, self.raw_sets = pool["clean"][self.third[0]:self.third[1]], sets  # full 1280-d
        self.descriptors = {name.removeprefix("desc-"): pool[name] for name in pool if name.startswith("desc-")}
        self.descriptors["reference"] = pool["desc-clean"][self.third[0]:self.third[1]]
        self.descriptors["clean"] = pool["desc-clean"][self.third[1]:]

    def draw(self, name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A current batch of ``size`` distinct images of one set (embeddings, softmax)."""
        rows = rng.choice(len(self.sets[name]), size=min(size, len(self.sets[name])), replace=False)
        return self.sets[name][rows], self.probs[name][rows]


def power_study(setup: Setup, sizes: list[int], reps: int, null_reps: int, permutations: int,
                report: BenchReport) -> pd.DataFrame:
    """Detection rate per corruption x severity x size, and false-positive rate per size."""
    rows = []
    cells = [("none", 0)] + [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    for corruption, severity in progress(cells, "power study", unit="cell"):
        name = "clean" if corruption == "none" else f"{corruption}-{severity}"
        for size in sizes:
            trials = null_reps if corruption == "none" else reps
            rng = np.random.default_rng(size * 1000 + severity)
            hits = []
            for trial in range(trials):
                emb, probs = setup.draw(name, size, rng)
                hits.append(detect(setup.reference, emb, setup.reference_probs, probs, permutations=permutations,
                                   seed=trial).drift_detected)
            row = {"corruption": corruption, "severity": severity, "size": size, "trials": trials,
                   "rate": float(np.mean(hits))}
            report.emit(kind="fpr" if corruption == "none" else "power", **row)
            rows.append(row)
    return pd.DataFrame(rows)


def evidently_fpr(setup: Setup, size: int, trials: int, report: BenchReport) -> dict[str, float]:
    """False-positive rates of Evidently 0.7's embedding-drift methods on the same kind of no-shift draws."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd, model

    methods = {"evidently_model": model(), "evidently_mmd_bootstrap": mmd(bootstrap=True)}
    rng = np.random.default_rng(99)
    rates = {}
    for label, method in methods.items():
        alarms = 0
        for _ in range(trials):
            emb, _ = setup.draw("clean", size, rng)
            alarms += bool(method(pd.DataFrame(emb), pd.DataFrame(setup.reference))[1])
        rates[label] = alarms / trials
        report.emit(kind="evidently_fpr", method=label, size=size, trials=trials, rate=rates[label])
    return rates


def report_seconds(setup: Setup, size: int, permutations: int, workdir: Path) -> float:
    """Wall time of the stage's analysis + Evidently report for a current set of ``size`` images."""
    from pipeline.drift.describe import describe_shifts
    from pipeline.drift.outliers import domain_classifier_scores
    from pipeline.drift.evidently import build_snapshot, report_frame, save_snapshot
    from pipeline.drift.detector import pca_project

    rng = np.random.default_rng(size)
    names = [n for n in setup.raw_sets if n != "clean"]
    picks = [(names[i % len(names)], rng.integers(len(setup.raw_sets[names[0]]))) for i in range(size)]
    emb = np.stack([setup.raw_sets[n][r] for n, r in picks])  # drawn with replacement: timing only
    probs = np.stack([setup.probs[n][r] for n, r in picks])
    desc = pd.DataFrame(np.stack([setup.descriptors[n][r] for n, r in picks]), columns=list(DESCRIPTORS))
    ref_desc = pd.DataFrame(setup.descriptors["reference"], columns=list(DESCRIPTORS))
    classes = [str(c) for c in range(probs.shape[1])]
    started = time.perf_counter()
    detect(setup.raw_reference, emb, setup.reference_probs, probs, permutations=permutations)
    describe_shifts(ref_desc, desc)
    ref_pca, cur_pca = pca_project(setup.raw_reference, emb, 32)
    domain_classifier_scores(ref_pca, cur_pca)
    frames = [report_frame(ref_desc, setup.reference_probs, ref_pca, classes),
              report_frame(desc, probs, cur_pca, classes)]
    snapshot = build_snapshot(*frames, list(DESCRIPTORS), {}, [], name=f"bench {size}")
    save_snapshot(snapshot, workdir / f"r{size}.html", workdir / f"r{size}.json")
    return time.perf_counter() - started


def write_table_and_plot(table: pd.DataFrame, evidently: dict[str, float], sizes: list[int]) -> tuple[Path, Path]:
    """drift_power.md (detection / false-positive rates) and drift_power.png (rate vs sample size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = table.pivot_table(index=["corruption", "severity"], columns="size", values="rate").reset_index()
    lines = ["| corruption | severity | " + " | ".join(f"n={s}" for s in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for row in wide.itertuples(index=False):
        label = "none (false-positive rate)" if row[0] == "none" else row[0]
        lines.append(f"| {label} | {row[1]} | " + " | ".join(f"{v:.2f}" for v in row[2:]) + " |")
    lines += ["", "Evidently 0.7 embedding drift, false-positive rate on the same kind of no-shift draws "
              "(batch size nearest 50):", ""]
    lines += [f"- {name}: {rate:.2f}" for name, rate in evidently.items()]
    md = write_text(RESULTS / "drift_power.md", "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(CORRUPTIONS), figsize=(4.2 * len(CORRUPTIONS), 3.6), sharey=True)
    null = table[table["corruption"] == "none"]
    for ax, corruption in zip(np.atleast_1d(axes), CORRUPTIONS):
        for severity in SEVERITIES:
            cell = table[(table["corruption"] == corruption) & (table["severity"] == severity)]
            ax.plot(cell["size"], cell["rate"], marker="o", label=f"severity {severity}")
        ax.plot(null["size"], null["rate"], "k--", marker="x", label="no shift (FPR)")
        ax.axhline(0.05, color="grey", lw=0.8)
        ax.set(xscale="log", title=corruption, xlabel="current batch size", ylim=(-0.02, 1.02))
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
    np.atleast_1d(axes)[0].set_ylabel("detection rate at alpha 0.05")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(RESULTS / "drift_power.png", suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return md, RESULTS / "drift_power.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50, 200, 500])
    parser.add_argument("--reps", type=int, default=10, help="draws per corruption x severity x size")
    parser.add_argument("--null-reps", type=int, default=60, help="no-shift draws per size (false-positive rate)")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="tiny run: sizes 50 200, 3 draws, 10 null draws")
    ns = parser.parse_args()
    if ns.quick:
        ns.sizes, ns.reps, ns.null_reps = [50, 200], 3, 10
    report = BenchReport("bench_drift")
    setup = Setup(load_pool(ns.image_size))
    table = power_study(setup, ns.sizes, ns.reps, ns.null_reps, ns.permutations, report)
    compare_size = min(ns.sizes, key=lambda n: abs(n - 50))  # Evidently's classifier method needs tens of rows
    evidently = evidently_fpr(setup, compare_size, ns.null_reps // 2 or 1, report)
    ours = float(table[(table["corruption"] == "none") & (table["size"] == compare_size)]["rate"].iloc[0])
    for name, rate in evidently.items():
        report.emit(kind="fpr_ratio", ours=ours, evidently=name, ratio_evidently_to_ours=rate / max(ours, 1e-9))
    workdir = RESULTS / "drift_timing"
    small, large = (report_seconds(setup, n, 1000, workdir) for n in (1000, 10000))
    report.emit(kind="report_time", seconds_1000=round(small, 2), seconds_10000=round(large, 2),
                ratio_10000_to_1000=round(large / small, 2))
    md, png = write_table_and_plot(table, evidently, ns.sizes)
    report.emit(kind="outputs", table=str(md), plot=str(png))
    report.save()


if __name__ == "__main__":
    main()
