"""The stages' process pools: workers forked from the fork server against spawned ones (pipeline/common/pools.py).

A pool of ``--workers`` processes whose jobs need what a scratch run imports (pipeline.evaluation.scratch_curve:
torch, timm, scikit-learn) is started three ways in this process: spawned (how the pools started before, the
reference), forked from a fork server this pool starts (a stage's first pool: the server imports once), and
forked from that server again (a later pool of the same process). Each job imports the module, then holds its
worker for a second so that every worker answers one job. Figures: the wall time until every worker has
answered, less that second, and the CPU seconds the pool's processes spent (each worker's own at its job's end,
plus the fork server's start where this pool started it), with their ratios to the reference.

    python -m bench.bench_pools --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

from bench.report import BenchReport
from pipeline.common.pools import process_pool

MODULE = "pipeline.evaluation.scratch_curve"
HOLD_S = 1.0


def _job(_: int) -> tuple[int, float]:
    """In a worker: the scratch run's imports, then the worker held; its pid and CPU seconds so far."""
    import importlib

    importlib.import_module(MODULE)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(HOLD_S)
    return os.getpid(), usage.ru_utime + usage.ru_stime


def _server_cpu() -> float:
    """CPU seconds of this process's fork server (0 while none runs)."""
    for child in psutil.Process().children():
        if "multiprocessing.forkserver" in " ".join(child.cmdline()):
            times = child.cpu_times()
            return times.user + times.system
    return 0.0


def _measure(pool: ProcessPoolExecutor, workers: int) -> tuple[float, float, int]:
    server_before = _server_cpu()
    started = time.perf_counter()
    with pool:
        answers = list(pool.map(_job, range(workers)))
    wall = time.perf_counter() - started - HOLD_S
    cpu = sum(seconds for _, seconds in answers) + _server_cpu() - server_before
    return wall, cpu, len({pid for pid, _ in answers})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    ns = parser.parse_args()
    report = BenchReport(f"pools-{ns.workers}")
    ways = {
        "spawned": lambda: ProcessPoolExecutor(ns.workers, mp_context=multiprocessing.get_context("spawn")),
        "forked, server started": lambda: process_pool(ns.workers, [MODULE]),
        "forked, server running": lambda: process_pool(ns.workers, [MODULE]),
    }
    reference: tuple[float, float] | None = None
    for way, make in ways.items():
        wall, cpu, distinct = _measure(make(), ns.workers)
        reference = reference or (wall, cpu)
        report.emit(way=way, workers=ns.workers, workers_answering=distinct, wall_s=round(wall, 2),
                    cpu_s=round(cpu, 2), wall_vs_spawned=round(wall / reference[0], 2),
                    cpu_vs_spawned=round(cpu / reference[1], 2))
    report.save()


if __name__ == "__main__":
    main()
