"""What one scratch training step costs, by input side and batch: where the verdict's scratch side spends its time.

One step as the training loop takes it on the CPU (pipeline/training/loop.py ``Trainer._step``, whose
settings it reads from the default params: layout, label smoothing, clipping, weight decay, the scratch lr):
forward and backward of the architecture from a random start, then the fused AdamW update, on ``--threads``
threads. Each side x batch is timed in a fresh process of its own
(``--repeats`` times), as a stage's pool worker would run it: the median of the steps after the first few.
Figures: milliseconds a step and images a second, and each side's ratio to the first side at the same batch
(the reference, measured in the same run). The batches default to the ones the default run trains at: 8 (the
curve's 2/class runs), 25 (its 10/class runs), 64 (the baseline).

    python -m bench.bench_scratch_step [--sizes 64 32] [--batches 8 25 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import BenchReport

ARCHITECTURE = "efficientnet_lite0"
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the default run's params
WARMUP_STEPS, TIMED_STEPS = 5, 20


def _one(size: int, batch: int, threads: int) -> float:
    """In a fresh process: the median seconds of a scratch training step at this side and batch."""
    import torch

    from pipeline.config import load_params
    from pipeline.models import LoadedModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = load_params(PARAMS)
    train = params.train
    layout = torch.channels_last if train.channels_last else torch.contiguous_format
    model = LoadedModel.scratch(ARCHITECTURE, 10, size, seed=0, classes=[str(i) for i in range(10)])
    network = model.network.train().to(memory_format=layout)
    optimizer = torch.optim.AdamW(network.parameters(), lr=params.baseline.lr, weight_decay=train.weight_decay,
                                  fused=True)
    images = torch.randn(batch, 3, size, size).to(memory_format=layout)
    labels = torch.randint(0, 10, (batch,))
    seconds = []
    for _ in range(WARMUP_STEPS + TIMED_STEPS):
        started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(network(images), labels, label_smoothing=train.label_smoothing).backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(network.parameters(), train.grad_clip)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[WARMUP_STEPS:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32], help="input sides (the first: reference)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 25, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per side x batch")
    parser.add_argument("--one", type=int, nargs=2, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.one:
        print(json.dumps(_one(*ns.one, ns.threads)))
        return
    report = BenchReport(f"scratch-step-{ns.threads}t")
    reference: dict[int, float] = {}
    for batch in ns.batches:
        for size in ns.sizes:
            runs = [json.loads(subprocess.run(
                [sys.executable, "-m", "bench.bench_scratch_step", "--one", str(size), str(batch), "--threads",
                 str(ns.threads)], capture_output=True, text=True, check=True).stdout) for _ in range(ns.repeats)]
            step = statistics.median(runs)
            reference.setdefault(batch, step)
            report.emit(architecture=ARCHITECTURE, image_size=size, batch=batch, threads=ns.threads,
                        ms_per_step=round(1000 * step, 1), ms_each_process=[round(1000 * r, 1) for r in runs],
                        images_per_s=round(batch / step, 1),
                        cheaper_than_reference=round(reference[batch] / step, 2))
    report.save()


if __name__ == "__main__":
    main()
