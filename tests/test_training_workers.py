"""Independent runs side by side (pipeline/training/workers.py): each worker on its share of the threads, results in
the order of the jobs, and a failed run named."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.common.logs import get_logger
from pipeline.training.workers import run_in_workers, worker_plan

CPU = torch.device("cpu")


def _report(job: int) -> dict:
    """What a worker sees (module level: spawned workers import it by name)."""
    if job < 0:
        raise ValueError(f"job {job} is negative")
    get_logger("tests.workers").warning("job %d at work", job)
    return {"job": job, "pid": os.getpid(), "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS")}


def test_the_plan_gives_each_run_its_share_and_an_accelerator_one_run_at_a_time():
    assert worker_plan(6, 2, CPU) == (2, 1)  # two cores: two runs at once, one thread each
    assert worker_plan(6, 16, CPU) == (6, 2)  # more threads than runs: each run gets several
    assert worker_plan(6, 7, CPU) == (6, 1)  # never more threads in all than given
    assert worker_plan(1, 8, CPU) == (1, 8)  # one run keeps every thread, in this process
    assert worker_plan(6, 1, CPU) == (1, 1)
    assert worker_plan(6, 8, torch.device("cuda")) == (1, 8)


@pytest.mark.timeout(300)
def test_runs_come_back_in_job_order_each_on_its_thread_share():
    results = run_in_workers(_report, [3, 1, 2, 0], CPU, ["a", "b", "c", "d"], threads=2)
    assert [r["job"] for r in results] == [3, 1, 2, 0]
    assert {r["threads"] for r in results} == {1} and {r["omp"] for r in results} == {"1"}
    pids = {r["pid"] for r in results}  # the first worker up may take every quick job: one or two of them
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids


def test_one_thread_runs_the_jobs_here():
    results = run_in_workers(_report, [1, 2], CPU, ["a", "b"], threads=1)
    assert {r["pid"] for r in results} == {os.getpid()}


@pytest.mark.timeout(300)
def test_a_failed_run_fails_the_call_naming_it():
    with pytest.raises(RuntimeError, match=r"run second failed: job -1 is negative"):
        run_in_workers(_report, [1, -1, 2], CPU, ["first", "second", "third"], threads=2)


@pytest.mark.timeout(300)
def test_the_first_job_takes_the_threads_left_and_leaves_none_behind_and_every_line_names_its_run(capfd):
    # seven threads over six jobs: six workers of one thread, and the first job the one the others leave
    results = run_in_workers(_report, [0, 1, 2, 3, 4, 5], CPU, [f"run-{j}" for j in range(6)], threads=7,
                             first_takes_rest=True)
    assert [r["threads"] for r in results] == [2, 1, 1, 1, 1, 1]  # whichever worker ran a job after the first
    err = capfd.readouterr().err
    for job in range(6):
        assert f"[run-{job}] job {job} at work" in err
