"""Two training jobs on one machine: each with every core's threads (before) against each with its share.

    python -m bench.bench_jobs [--seconds 10] [--batch 32] [--rounds 1]

A job is a process training the scratch baseline's network (EfficientNet-Lite0, random init, 64 px,
channels_last) on random images for a fixed time after a warm-up; it reports its images/s. Four settings, the
jobs of each started together (a barrier) so that they overlap whole:

1. ``all cores, alone``: one job with torch's default threads (one per core): the reference.
2. ``all cores, two at once``: two such jobs: what a drift check beside a retrain, or a run beside the test
   suite, did before (each oversubscribes the cores; OpenMP threads spin for threads that are not running).
3. ``share, alone``: one job taking its share (pipeline/common/threads.py, ``orchestrate.threads: null``):
   every core, as the reference.
4. ``share, two at once``: two jobs, each registered as a job and taking its share: half the cores each.
5. ``one thread, alone``: one job with one thread, for scale: what one core gives under the machine's load.

Figures: each job's images/s; per setting the median, its slowdown against the reference (alone img/s / its
img/s) and against the fastest a job ran alone (on a machine busy with other work, one thread alone can beat
every core alone: the busy cores hold the threads up too). Two jobs that share the cores fairly slow down by
the number of jobs (2x here); thrashing is far more. Jobs register in a folder of their own here
(``TLOPS_JOBS_DIR``), so other tlops work on the machine does not change the share; it still takes CPU time
from them, so the figures are noisy on a shared machine (the load average is printed with each setting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import BenchReport

SETTINGS = (("all cores", 1), ("all cores", 2), ("share", 1), ("share", 2), ("one thread", 1))
MODEL = "efficientnet_lite0"


def _network():
    """The scratch baseline's network (random init) in the layout the training loop uses on the CPU."""
    import torch

    from pipeline.models import LoadedModel

    return LoadedModel.scratch(MODEL, 10, 64, seed=0).network.to(memory_format=torch.channels_last).train()


def _wait_for(barrier: Path, jobs: int, timeout: float = 120) -> None:
    """Mark this job ready and wait until ``jobs`` are (every job starts its clock together)."""
    (barrier / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob("*.ready"))) < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(barrier.glob('*.ready')))} of {jobs} jobs started")
        time.sleep(0.02)


def _train(seconds: float, warmup_s: float, size: int, batch: int) -> dict:
    """Train for ``warmup_s`` then ``seconds``; images/s over the timed part (whole steps)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model, criterion = _network(), nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    while time.perf_counter() - started < warmup_s:
        step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or steps == 0:
        step()
        steps += 1
    elapsed = time.perf_counter() - started
    return {"img_s": steps * batch / elapsed, "steps": steps, "seconds": elapsed, "threads": torch.get_num_threads()}


def worker(args: argparse.Namespace) -> None:
    """One job: register when sharing, wait for the others, take its threads, train, print one JSON line."""
    import pipeline.models  # noqa: F401 (imported before the barrier: each job's clock starts on training)

    barrier = Path(args.barrier)
    if args.mode == "share":
        from pipeline.common.threads import job, run_threads

        with job(f"bench job {os.getpid()}"):
            _wait_for(barrier, args.jobs)  # every job is registered before any takes its share
            with run_threads(None, "bench job") as share:
                result = {**_train(args.seconds, args.warmup, args.size, args.batch), "share": share.reason}
    else:  # today's behaviour (torch's default, one thread per core), or one thread
        _wait_for(barrier, args.jobs)
        if args.mode == "one thread":
            import torch

            torch.set_num_threads(1)
        result = _train(args.seconds, args.warmup, args.size, args.batch)
    print(json.dumps(result), flush=True)


def _run_setting(mode: str, jobs: int, args: argparse.Namespace, jobs_dir: Path) -> list[dict]:
    """Start ``jobs`` worker processes of ``mode`` together; their results."""
    barrier = Path(tempfile.mkdtemp(prefix="bench-jobs-barrier-"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "OPENBLAS_NUM_THREADS", "TLOPS_THREADS", "TLOPS_JOB")}
    env.update(TLOPS_JOBS_DIR=str(jobs_dir), TLOPS_NO_PROGRESS="1")
    command = [sys.executable, "-m", "bench.bench_jobs", "--worker", "--mode", mode, "--jobs", str(jobs),
               "--barrier", str(barrier), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
               "--size", str(args.size), "--batch", str(args.batch)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=args.seconds * 20 + 300)
        if proc.returncode != 0:
            raise RuntimeError(f"a {mode} job exited with {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed training per job")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed training first")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels (the scratch baseline's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="the four settings this many times, interleaved")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("all cores", "share", "one thread"), default="share", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from pipeline.common.threads import machine_cores

    report = BenchReport("jobs")
    report.emit(setup=f"{MODEL} scratch, {args.size}px, batch {args.batch}, {args.seconds:g} s timed per job after "
                      f"{args.warmup:g} s warm-up; {machine_cores()} cores; the jobs of a setting start together",
                load_before=round(os.getloadavg()[0], 2))
    jobs_dir = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    rates: dict[tuple[str, int], list[float]] = {setting: [] for setting in SETTINGS}
    for round_ in range(1, args.rounds + 1):
        for mode, jobs in SETTINGS:
            results = _run_setting(mode, jobs, args, jobs_dir)
            rates[mode, jobs] += [r["img_s"] for r in results]
            report.emit(round=round_, setting=_name(mode, jobs), threads_each=[r["threads"] for r in results],
                        img_s_each=[round(r["img_s"], 1) for r in results], load=round(os.getloadavg()[0], 2))
    medians = {setting: statistics.median(values) for setting, values in rates.items()}
    reference = medians["all cores", 1]  # alone with every core: today's single job
    best = max(rate for (_, jobs), rate in medians.items() if jobs == 1)  # the fastest a job ran alone
    for (mode, jobs), rate in medians.items():
        report.emit(summary=_name(mode, jobs), img_s_median=round(rate, 1),
                    slowdown_vs_all_cores_alone=round(reference / rate, 2),
                    slowdown_vs_best_alone=round(best / rate, 2), fair_slowdown=jobs,
                    img_s_machine=round(rate * jobs, 1))
    report.save()


def _name(mode: str, jobs: int) -> str:
    return f"{mode}, {'alone' if jobs == 1 else f'{jobs} at once'}"


if __name__ == "__main__":
    main()
