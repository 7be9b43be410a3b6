"""Independent training runs side by side: worker processes, each on its share of this process's threads.

The scratch runs of the label-efficiency curve share nothing but the data. On a CPU one of them on small
batches uses two threads little better than one (EfficientNet-Lite0 at 64 px, batch 8, measured on the
2-core development machine), so two runs at once, one thread each, finish the curve about twice as fast
as one after the other on two threads. Each worker gets ``threads // workers`` threads (at least one),
where ``threads`` is the stage's share of the machine (pipeline/common/threads.py, applied to torch when the
stage started): the runs split the stage's cores and never ask for more. The first job may take the threads the
others leave (the scratch baseline does); every job sets its own count as it starts, so a run's count never
depends on which worker ran it, and its log lines carry its name (runs side by side write to one log).

Workers are forked from a fork server (pipeline/common/pools.py: not from this process, where a fork after torch
started its thread pools can deadlock), which the process's first pool started with its jobs' module imported once,
and stay in this process's group: stopping the stage (pipeline/common/processes.py stops the whole group) stops
them.
A run that raises fails the whole call with the run named; the runs not started yet are cancelled.
Results come back in the order of the jobs, whatever order they finish in, and every run seeds itself,
so the results do not depend on how many workers ran them (the thread count of a run can move its last
digits: each row records it).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_EXCEPTION, wait
from typing import Callable, Sequence, TypeVar

import torch

from pipeline.common.logs import get_logger, setup_logging
from pipeline.common.pools import process_pool
from pipeline.common.threads import child_env, set_library_threads

__all__ = ["worker_plan", "run_in_workers"]
log = get_logger(__name__)
J = TypeVar("J")
R = TypeVar("R")


def worker_plan(jobs: int, threads: int, device: torch.device) -> tuple[int, int]:
    """(worker processes, threads each) for ``jobs`` runs on ``threads`` threads: one run per thread on a CPU;
    on an accelerator one run at a time in this process (the runs would only queue on it)."""
    if device.type != "cpu" or jobs <= 1 or threads <= 1:
        return 1, max(threads, 1)
    workers = min(jobs, threads)
    return workers, max(threads // workers, 1)


def _start_worker(threads: int, level: str) -> None:
    """Each worker: its thread share (torch, the pools of the libraries the fork server loaded with the stage's
    whole share, and those of what it starts) and the stage's logging."""
    os.environ.update(child_env(threads))
    set_library_threads(threads)
    setup_logging(level)


class _RunName(logging.Filter):
    """Puts a pooled run's name before each of its log lines (once, however many handlers the line passes)."""

    def __init__(self, name: str):
        super().__init__()
        self.prefix = f"[{name.replace('%', '%%')}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "run_named", False):
            record.msg, record.run_named = self.prefix + str(record.msg), True
        return True


def _run_job(fn: Callable[[J], R], job: J, name: str, threads: int) -> R:
    """One job in a worker: on its own thread count, its log lines named."""
    torch.set_num_threads(threads)
    handlers, named = logging.getLogger("tlops").handlers, _RunName(name)
    for handler in handlers:
        handler.addFilter(named)
    try:
        return fn(job)
    finally:
        for handler in handlers:
            handler.removeFilter(named)


def run_in_workers(fn: Callable[[J], R], jobs: Sequence[J], device: torch.device, names: Sequence[str],
                   threads: int | None = None, first_takes_rest: bool = False) -> list[R]:
    """``[fn(job) for job in jobs]``, the jobs spread over worker processes (:func:`worker_plan`).

    Args:
        fn: a module-level function (workers import it by name); it must seed itself from its job.
        jobs: picklable job descriptions.
        device: where the runs train (an accelerator runs them here, one at a time).
        names: one display name per job, for the log and for the error of a failed run.
        threads: the threads to share (default: this process's ``torch.get_num_threads()``).
        first_takes_rest: the first job (the longest) runs on the threads the other workers leave, not on one
            worker's share (unused where the jobs run in this process, on every thread).
    Returns:
        The results, in the order of ``jobs``.
    Raises:
        RuntimeError: a run failed (its name and error; the runs not started are cancelled).
    """
    threads = threads or torch.get_num_threads()
    workers, each = worker_plan(len(jobs), threads, device)
    if workers == 1:
        return [fn(job) for job in jobs]
    log.info("%d runs on %d worker processes, %d thread(s) each", len(jobs), workers, each)
    level = logging.getLevelName(logging.getLogger("tlops").getEffectiveLevel())
    with process_pool(workers, [__name__, fn.__module__], _start_worker, (each, level)) as pool:
        counts = [threads - (workers - 1) * each if i == 0 and first_takes_rest else each for i in range(len(jobs))]
        futures = [pool.submit(_run_job, fn, job, name, count) for job, name, count in zip(jobs, names, counts)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [(name, f) for name, f in zip(names, futures) if f in done and f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            name, future = failed[0]
            raise RuntimeError(f"run {name} failed: {future.exception()}") from future.exception()
        return [future.result() for future in futures]
