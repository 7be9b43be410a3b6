"""The threads a run computes with: the cores it is given, so that jobs sharing a machine share its cores.

PyTorch, OpenMP and the BLAS libraries each start one thread per core of the machine. Two such processes on one
machine (a drift check beside a retrain on one worker, a `make run` beside the test suite) keep twice as many
busy threads as there are cores; OpenMP's threads spin at each barrier for a thread that is not running, and
both jobs slowed down tenfold instead of twofold (the scratch baseline: 61 img/s alone, 2-6 beside the test suite;
bench/bench_jobs.py measures it).

So every stage process (and `tlops predict`) takes its share once, when it starts (:func:`run_threads`):

- ``orchestrate.threads`` an integer: that many threads, whatever else runs;
- null (the default): ``OMP_NUM_THREADS`` when whoever started the process set it, else the cores this process
  may run on (its CPU affinity and its cgroup's CPU quota: a container's limit), divided by the jobs in progress
  on this machine. Alone, a run takes every core; beside a second job, half.

A job is a flow run (a retrain, a drift check) or a stage run outside one (`tlops <stage>`, `dvc repro` by hand).
Each holds an ``flock`` on a file of its own in a per-user folder (``<tmp>/tlops-jobs-<uid>``, or
``TLOPS_JOBS_DIR``) for as long as it runs; the processes it starts belong to it (``TLOPS_JOB``) and do not count
again. The kernel drops a lock with its process, so a job killed outright stops counting at once. A stage keeps
the share it started with to its end: a run's last digits depend on its thread count (a sum in another order), and
a stage whose count changed between epochs would not reproduce, not even when resumed from a checkpoint.

The share reaches the libraries of this process (torch's intra- and inter-op threads; the BLAS and OpenMP pools
already loaded, through threadpoolctl) and every process it starts (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, read by a library when it loads, and ``TLOPS_THREADS``, which a child `tlops` process
takes as its share as it is: the torchrun ranks of a stage split the stage's share, pipeline/training/ddp.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.common.logs import get_logger

__all__ = ["Share", "THREADS_ENV", "JOB_ENV", "JOBS_DIR_ENV", "LIBRARY_ENV", "PARAM", "machine_cores",
           "running_jobs", "job", "resolve", "child_env", "library_threads", "set_library_threads", "applied",
           "run_threads", "current", "busy_note"]
log = get_logger(__name__)

PARAM = "orchestrate.threads"
THREADS_ENV = "TLOPS_THREADS"  # the share a parent tlops process hands its children (torchrun ranks): taken as is
JOB_ENV = "TLOPS_JOB"  # set while a job is registered: the processes it starts belong to it
JOBS_DIR_ENV = "TLOPS_JOBS_DIR"  # where jobs register (default: <tmp>/tlops-jobs-<uid>)
LIBRARY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_SUFFIX = ".lock"


@dataclass(frozen=True)
class Share:
    """The threads a process computes with, and why (for the log line)."""

    threads: int
    reason: str
    automatic: bool = False  # the machine's cores divided among its jobs (the busy note applies)


def _env_int(name: str) -> int | None:
    """A positive integer from the environment, else None (unset, empty or not a positive integer)."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _cgroup_quota(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
                  ) -> int | None:
    """The CPU quota of this process's cgroups in whole cores (rounded up), or None when there is none.

    cgroup v2 (``cpu.max``: ``<quota> <period>`` or ``max <period>``) and v1 (``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``, -1 = none), on the process's own cgroup and each one above it: the tightest counts.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    cores: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one unified hierarchy
            bases, files = [cgroup_root, cgroup_root / "unified"], ("cpu.max",)
        elif "cpu" in controllers.split(","):
            bases = [cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"]
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        rel = Path(path.lstrip("/"))
        for base in bases:
            for folder in [base / rel, *(base / p for p in rel.parents)]:
                quota = _read_quota(folder, files)
                if quota is not None:
                    cores.append(quota)
    return min(cores) if cores else None


def _read_quota(folder: Path, files: tuple[str, ...]) -> int | None:
    try:
        if len(files) == 1:
            quota, period = (folder / files[0]).read_text().split()[:2]
        else:
            quota, period = ((folder / name).read_text().strip() for name in files)
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period))) if int(quota) > 0 else None


def machine_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota (a container's
    ``--cpus``, a Kubernetes CPU limit), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota() if sys.platform.startswith("linux") else None
    return max(1, min(cores, quota) if quota else cores)


def _jobs_dir() -> Path:
    configured = os.environ.get(JOBS_DIR_ENV)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"tlops-jobs-{uid}"


_held: dict[str, int] = {}  # this process's registrations: path -> the descriptor holding its lock


def running_jobs() -> int:
    """The jobs in progress on this machine (this process's own counted, registered or not); stale files (their
    process gone, its lock with it) are removed on the way."""
    folder = _jobs_dir()
    live = 0
    try:
        names = [n for n in os.listdir(folder) if n.endswith(_SUFFIX)]
    except OSError:
        names = []
    for name in names:
        path = folder / name
        if str(path) in _held:
            live += 1
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # removed meanwhile: its job has ended
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # locked: its job runs
            live += 1
        else:  # nobody holds it: its process died without removing it
            with contextlib.suppress(OSError):
                path.unlink()
        finally:
            os.close(fd)
    part_of_one = bool(_held) or bool(os.environ.get(JOB_ENV))
    return max(live + (0 if part_of_one else 1), 1)


def _register(what: str) -> Path | None:
    """Register a job: a file locked by this process (made under a temporary name, locked, then renamed, so a
    counter never sees it unlocked). None when the folder cannot be written (the job then counts for nobody)."""
    folder = _jobs_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as err:
        log.warning("cannot register this job in %s (%s): other jobs will not count it when they share the cores",
                    folder, err)
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()} {what}\n".encode())
    path = Path(temp).with_suffix(_SUFFIX)
    os.rename(temp, path)
    _held[str(path)] = fd
    return path


def _release(path: Path) -> None:
    fd = _held.pop(str(path), None)
    with contextlib.suppress(OSError):
        path.unlink()
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def job(what: str = "") -> Iterator[None]:
    """Count this process, and every process it starts, as one job on this machine while the block runs.

    Nothing is registered inside a job already (a flow's stage, a torchrun rank): the processes of a job share
    its count. ``what`` names the job in its file, for whoever looks (``ls <tmp>/tlops-jobs-<uid>``).
    """
    if os.environ.get(JOB_ENV):
        yield
        return
    path = _register(what or " ".join(sys.argv[:3]))
    if path is None:
        yield
        return
    os.environ[JOB_ENV] = str(path)
    try:
        yield
    finally:
        os.environ.pop(JOB_ENV, None)
        _release(path)


def _automatic() -> Share:
    cores, jobs = machine_cores(), running_jobs()
    return Share(max(1, cores // jobs), f"{cores} core(s) shared by {jobs} job(s) in progress on this machine; "
                                        f"{PARAM} = null", automatic=True)


def resolve(setting: int | None) -> Share:
    """The share of a process about to compute (see the module docstring for the rules, in this order).

    Args:
        setting: ``orchestrate.threads`` (None: automatic).
    """
    inherited = _env_int(THREADS_ENV)
    if inherited:
        return Share(inherited, f"{THREADS_ENV} = {inherited}: the share the process that started this one gave it")
    if setting is not None:
        return Share(setting, f"{PARAM} = {setting}")
    omp = _env_int("OMP_NUM_THREADS")
    if omp:
        return Share(omp, f"OMP_NUM_THREADS = {omp}, set by whoever started this process")
    return _automatic()


def current() -> int:
    """The threads this process's run may use: the share a stage applied, else what :func:`resolve` gives
    without a param (for code that sizes its own pools, e.g. validate's profile processes)."""
    return _env_int(THREADS_ENV) or resolve(None).threads


def library_threads() -> int | None:
    """The threads the environment gives the libraries a process loads (``OMP_NUM_THREADS``), None when unset."""
    return _env_int("OMP_NUM_THREADS")


def child_env(threads: int) -> dict[str, str]:
    """The environment that gives a child process ``threads`` threads (and a child `tlops` that share)."""
    return {**{name: str(threads) for name in LIBRARY_ENV}, THREADS_ENV: str(threads)}


def set_library_threads(threads: int) -> object | None:
    """torch's threads (when torch is loaded) and the pools of the libraries loaded so far; returns threadpoolctl's
    limiter (None when threadpoolctl is missing), whose ``restore_original_limits`` undoes the latter.

    A process that has not imported torch is not made to (2-4 s: the stages that read no model, such as ingest,
    validate and card, never do): should it load torch later, torch sizes its pool from ``OMP_NUM_THREADS``."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
        if torch.get_num_interop_threads() > threads:
            try:  # allowed once per process, before any inter-op work: elsewhere the pool keeps its size
                torch.set_num_interop_threads(threads)
            except RuntimeError:
                pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy's BLAS then keeps its pool; libraries loaded later read the environment
        return None
    return threadpool_limits(limits=threads)


@contextlib.contextmanager
def applied(threads: int) -> Iterator[None]:
    """Compute with ``threads`` threads in the block (this process and the processes it starts); the previous
    counts and environment come back after it (a test may run a stage in its own process)."""
    names = (*LIBRARY_ENV, THREADS_ENV)
    torch = sys.modules.get("torch")
    saved_env = {name: os.environ.get(name) for name in names}
    saved_torch = torch.get_num_threads() if torch is not None else None
    os.environ.update(child_env(threads))
    limiter = set_library_threads(threads)
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(saved_torch)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def run_threads(setting: int | None, what: str = "") -> Iterator[Share]:
    """Run the block as a job with its share of this machine's cores (the entry of every stage process).

    Args:
        setting: ``orchestrate.threads``.
        what: the job's name, e.g. ``tlops finetune``.
    Yields:
        The share applied.
    """
    with job(what):
        share = resolve(setting)
        # DEBUG: a stage's stderr stays its own lines (a failing stage's is one line); the retrain flow logs the
        # share each stage takes in the run's log
        log.debug("threads: %d (%s)", share.threads, share.reason)
        if busy := busy_note(share):
            log.debug(busy)
        with applied(share.threads):
            yield share


def busy_note(share: Share) -> str | None:
    """A note when the machine is busier than its cores with work an automatic share does not count (only tlops
    jobs are counted): threads that wait for one another at every step then thrash (bench/bench_jobs.py on the
    busy 2-core machine: 2 threads ran at a quarter to a sixteenth of 1 thread's speed). None when there is
    nothing to say."""
    if not share.automatic or share.threads < 2 or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], machine_cores()
    if load <= 2 * cores:
        return None
    return (f"this machine is busy (load {load:.1f} over the last minute on {cores} cores): {share.threads} threads "
            f"may wait on one another at every step; if the run is slow, give it fewer with {PARAM} (or "
            "OMP_NUM_THREADS)")
