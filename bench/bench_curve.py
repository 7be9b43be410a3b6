"""The curve's scratch runs one after the other on every thread, against side by side on a thread share each.

On the default digits (64 px), the scratch runs of one budget (``--budget`` per class, three seeds) train
twice in this process: one after the other with all of this process's threads (how evaluate ran them
before the curve stage), then through pipeline/training/workers.py (one worker per thread). Figures: the
wall time of each way, their ratio, images per second, and each seed's accuracy and steps both ways (the
runs' last digits may differ: a run on one thread sums in another order).

    python -m bench.bench_curve --budget 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.report import BenchReport
from pipeline.common.logs import setup_logging
from pipeline.config import validate_params
from pipeline.data.shards import read_classes, read_manifest, train_in_budget
from pipeline.evaluation.label_efficiency import curve_draws
from pipeline.evaluation.scratch_curve import ScratchJob, curve_val_ids, scratch_run
from pipeline.stages import ingest
from pipeline.training.recipes import Setup
from pipeline.training.workers import run_in_workers, worker_plan

MODEL = "efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2, help="labels per class of the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ns = parser.parse_args()
    setup_logging("WARNING")
    report = BenchReport(f"curve-{ns.budget}")
    params = validate_params({})
    with tempfile.TemporaryDirectory(prefix="tlops-bench-curve-") as tmp:
        dataset = Path(tmp) / "dataset"
        ingest.run(params, ingest.Args(dataset=dataset, metrics=Path(tmp) / "i.json", report_dir=Path(tmp) / "r"))
        manifest = read_manifest(dataset)
        pool = train_in_budget(manifest, dataset)
        ids, labels = pool["id"].tolist(), pool["label_idx"].tolist()
        val_ids = curve_val_ids(manifest, params.curve.val_per_class, 0)
        setup = Setup(dataset, MODEL, read_classes(dataset), params.common.image_size, params.train,
                      torch.device("cpu"), None)
        draws = curve_draws(labels, [ns.budget], ns.seeds)
        jobs = [ScratchJob(setup, params.baseline, d.seed, [ids[i] for i in d.indices], val_ids, 0.1) for d in draws]
        threads = torch.get_num_threads()
        ways = {}
        for way in ("one_after_another", "side_by_side"):
            started = time.perf_counter()
            if way == "side_by_side":
                results = run_in_workers(scratch_run, jobs, setup.device, [d.name for d in draws], threads)
            else:
                results = [scratch_run(job) for job in jobs]
            wall = time.perf_counter() - started
            images = sum(r["steps"] * r["batch_size"] for r, _ in results)
            ways[way] = wall
            runs = [{key: r[key] for key in ("accuracy", "steps", "converged", "threads")} | {"seed": d.seed}
                    for d, (r, _) in zip(draws, results)]
            workers = worker_plan(len(jobs), threads, setup.device)[0] if way == "side_by_side" else 1
            report.emit(way=way, workers=workers, threads=threads, wall_s=round(wall, 1),
                        train_images_per_s=round(images / wall, 1), runs=runs)
        report.emit(budget=ns.budget, speedup_side_by_side=round(ways["one_after_another"] / ways["side_by_side"], 2))
    report.save()


if __name__ == "__main__":
    main()
