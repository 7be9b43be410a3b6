"""Benchmark of the verdict's comparisons on the default digits (EfficientNet-Lite0, 64 px).

    python -m bench.bench_verdict [--budgets 2 10] [--seeds 0 1 2]

Rows: (1) per curve budget: the transfer side (the solved probe) and the scratch side (trained to
convergence) over the seeds: test accuracy mean and interval, seconds and steps per run, the share of
runs that converged, and the scratch/transfer compute ratio; (2) the digits figures: the fine-tuned
model (the automatic plan) and the converged scratch baseline, with 10 labels per class and with all
labels, and the model the promotion gate would consider. Figures go to bench/results/verdict.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.report import BenchReport
from pipeline.common.logs import setup_logging
from pipeline.config import validate_params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.evaluation.comparison import embed_splits, full_label_comparison, label_efficiency, recommend
from pipeline.evaluation.label_efficiency import sample_per_class
from pipeline.evaluation.references import majority_accuracy
from pipeline.evaluation.scratch_curve import scratch_side
from pipeline.models import LoadedModel
from pipeline.stages import baseline, finetune, freeze, ingest, select
from pipeline.training.recipes import Setup

MODEL = "efficientnet_lite0"


def _chain(work: Path, budget_per_class: int | None) -> dict:
    """ingest -> select (lite0) -> freeze (auto) -> finetune -> baseline with a label budget; test accuracies."""
    params = validate_params({"ingest": {"budget_per_class": budget_per_class}, "select": {"candidates": [MODEL]}})
    ds = work / "ds"
    ingest.run(params, ingest.Args(ds, work / "i.json", work / "ri"))
    select.run(params, select.Args(ds, work / "features", work / "selection.json", work / "s.json", work / "s.png",
                                   work / "architecture.json"))
    freeze.run(params, freeze.Args(ds, work / "selection.json", work / "plan.json", work / "f.json"))
    tuned = finetune.run(params, finetune.Args(ds, work / "plan.json", work / "ft", work / "ft.json", work / "ft.csv",
                                               work / "ft.png", work / "ck-ft"))
    scratch = baseline.run(params, baseline.Args(ds, work / "architecture.json", work / "bl", work / "bl.json",
                                                 work / "bl.csv", work / "bl.png", work / "ck-bl"))
    correct = {}
    for name in ("ft", "bl"):
        model = LoadedModel.load(work / name)
        probs, labels, _ = model.predict(model.inputs(ds, "test"))
        correct[name] = probs.argmax(1) == labels
    full = full_label_comparison("all labels", correct["ft"], correct["bl"], None, params.evaluate, 0)
    return {"dataset": ds, "params": params, "finetuned": round(tuned["test_accuracy"], 4),
            "finetuned_kept": tuned["kept_reason"], "finetuned_s": tuned["train_seconds"],
            "scratch": round(scratch["test_accuracy"], 4), "scratch_converged": scratch["converged"],
            "scratch_steps": scratch["optimizer_steps"], "scratch_s": scratch["train_seconds"],
            "paired_p": full["p_value"], "full_label_verdict": full["verdict"], "promoted": recommend(full)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ns = parser.parse_args()
    setup_logging("WARNING")
    report = BenchReport("verdict")
    with tempfile.TemporaryDirectory(prefix="tlops-bench-verdict-") as tmp:
        for budget in (10, None):
            chain = _chain(Path(tmp) / f"budget-{budget or 'all'}", budget)
            report.emit(case="digits", labels_per_class=budget or "all",
                        **{k: v for k, v in chain.items() if k not in ("dataset", "params")})
        ds, params = chain["dataset"], chain["params"].model_copy(deep=True)
        manifest = read_manifest(ds)
        pool, val = train_in_budget(manifest, ds), manifest[manifest["split"] == "val"]
        val_ids = val["id"].to_numpy()[sample_per_class(val["label_idx"], params.curve.val_per_class, 0)]
        classes = read_classes(ds)
        model = LoadedModel.pretrained(MODEL, len(classes), params.common.image_size, classes=classes)
        features = embed_splits(model, ds, pool["id"].tolist(), val_ids.tolist(), 256)
        setup = Setup(ds, MODEL, classes, params.common.image_size, params.train, torch.device("cpu"), None)
        scratch = scratch_side(setup, params.baseline, pool["id"].tolist(), pool["label_idx"].tolist(),
                               val_ids.tolist(), ns.budgets, ns.seeds, majority_accuracy(features.test_labels)).curve
        curve = label_efficiency(scratch, "scratch_runs.json", features, pool["id"].tolist(), len(classes),
                                 params.freeze.probe_cs, params.evaluate.confidence, params.evaluate.min_gain)
    for point in curve["budgets"]:
        runs = {side: [r for r in curve["runs"] if r["name"] == point["name"] and r["side"] == side]
                for side in ("transfer", "scratch")}
        figures = {f"{side}_{key}": point[side][key] for side in runs for key in ("mean", "low", "high")}
        for side, rows in runs.items():
            figures[f"{side}_seconds_per_run"] = round(float(np.mean([r["seconds"] for r in rows])), 2)
            figures[f"{side}_steps_per_run"] = int(np.mean([r["steps"] for r in rows]))
            figures[f"{side}_converged_share"] = round(float(np.mean([r["converged"] for r in rows])), 3)
        report.emit(case="curve", budget=point["name"], verdict=point["verdict"], **figures,
                    scratch_over_transfer_compute=round(figures["scratch_seconds_per_run"]
                                                        / max(figures["transfer_seconds_per_run"], 1e-9), 1))
    report.save()


if __name__ == "__main__":
    main()
