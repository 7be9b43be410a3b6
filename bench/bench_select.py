"""Scoring every candidate (select) vs fine-tuning every candidate: is selection < 1/20 of the cost?

Run: ``python -m bench.bench_select [--dataset data/dataset] [--steps 10] [--epochs 8]``.
Both sides are measured in this one run, on this machine, on the same data and input size:
- scoring: the whole ``select`` stage (cold feature cache, latency probes, LogME/kNN/probe, CIs);
- fine-tuning: a plain loop (AdamW, cross-entropy, batch 32, all layers trainable) over the train
  split; ``--steps`` real optimiser steps are timed per model and extrapolated to ``--epochs`` full
  epochs (steps per epoch = ceil(train images / batch)). The extrapolation is stated in the output.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.report import BenchReport
from pipeline.common.logs import setup_logging
from pipeline.config import load_params
from pipeline.data.shards import read_classes
from pipeline.models import LoadedModel
from pipeline.stages.select import Args, run

BATCH = 32


def time_finetune_steps(name: str, dataset: Path, image_size: int, steps: int) -> tuple[float, int]:
    """Seconds per optimiser step of a full fine-tune of one candidate, and the train split size."""
    loaded = LoadedModel.pretrained(name, len(read_classes(dataset)), image_size)
    data = loaded.inputs(dataset, "train")
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = loaded.network.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-4)
    batches = iter(loader)
    times = []
    for step in range(steps + 1):  # the first step (allocations) is not timed
        images, labels = next(batches)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times), len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="timed fine-tune steps per model")
    parser.add_argument("--epochs", type=int, default=8, help="epochs a fine-tune would run")
    ns = parser.parse_args()
    setup_logging("WARNING")
    params = load_params(ns.params, ["common.device=cpu"])
    report = BenchReport("select")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        summary = run(params, Args(ns.dataset, out / "features", out / "sel.json", out / "m.json", out / "p.png"))
        scoring_s = time.perf_counter() - start
    report.emit(kind="scoring", candidates=params.select.candidates, wall_s=round(scoring_s, 2),
                features_and_scores_s=summary["scoring_seconds"], selected=summary["selected"])
    finetune_s = 0.0
    for name in params.select.candidates:
        per_step, n_train = time_finetune_steps(name, ns.dataset, params.common.image_size, ns.steps)
        epoch_s = per_step * math.ceil(n_train / BATCH)
        finetune_s += epoch_s * ns.epochs
        report.emit(kind="finetune", model=name, s_per_step=round(per_step, 4), steps_timed=ns.steps,
                    epoch_s_extrapolated=round(epoch_s, 2), train_images=n_train, epochs=ns.epochs)
    report.emit(kind="ratio", scoring_s=round(scoring_s, 2), finetune_all_s_extrapolated=round(finetune_s, 2),
                scoring_over_finetune=round(scoring_s / finetune_s, 4), goal="< 0.05",
                met=scoring_s / finetune_s < 0.05, note=f"fine-tune time extrapolated from {ns.steps} timed "
                f"steps per model to {ns.epochs} epochs; both measured in this run at "
                f"{params.common.image_size} px on the CPU")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
