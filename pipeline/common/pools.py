"""The process pools of the stages (the curve's scratch runs, image profiling): workers forked from a server that
imported their modules once.

A spawned worker imports everything its jobs need from nothing: for a scratch run that is torch, timm and
scikit-learn, about 7 s of CPU a worker on the 2-core development machine. A pool of two took 11 s to run its
first jobs, where the same pool forked from a server that had imported them took 5 s. Forking the stage process
itself is not safe (a fork after torch started its thread pools can deadlock), so the workers come from
multiprocessing's fork server: a fresh process that imports ``preload`` and then forks one worker per request.
Those imports start no pool of torch's, but they do start a few idle native threads (jemalloc's, through
pyarrow; BLAS may start its own), which the libraries make safe to fork (fork handlers); a hang would still end
at the stage's time limit. The server belongs to this process and stays in its process group, so stopping the
stage's group stops the server and every worker; at a normal exit this process stops the server and waits for
it (its CPU, and its workers', then counts among this process's children).

The first pool of a process starts the server, so the server keeps what this process had then: the preloaded
modules (a later pool's other modules are imported by each worker), file descriptors, signal dispositions,
limits. Each worker re-applies what matters of this process as it is when its pool starts: the environment,
stdout and stderr (passed as descriptors, so captured output still reaches the capture) and the working
directory (multiprocessing sends it). Libraries loaded by the server sized their pools from the environment of
the first pool: each worker sizes them again from its own (``OMP_NUM_THREADS``), as a spawned worker's libraries
would be sized as they load; a pool's initializer may then narrow them (pipeline/training/workers.py does).
Where there is no fork server (Windows) the workers are spawned.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import reduction
from typing import Any, Callable, Sequence

from pipeline.common.threads import library_threads, set_library_threads

__all__ = ["process_pool"]


class _Stream:
    """One of this process's standard streams (its file descriptor), handed to a worker, which writes to it."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):  # pickled while the worker starts: multiprocessing passes the descriptor itself
        return _attach, (reduction.DupFd(self.fd), self.fd)


def _attach(passed: Any, fd: int) -> None:
    """In the worker: the passed descriptor becomes its own ``fd`` (stdout, stderr)."""
    received = passed.detach()
    if received != fd:  # the server may have had it closed: then the descriptor arrives as that number
        os.dup2(received, fd)
        os.close(received)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:  # closed (a daemon's): a spawned worker would not have it either
        return False
    return True


def _start(environment: dict[str, str], streams: Any, initializer: Callable[..., None] | None,
           initargs: tuple) -> None:
    """A worker's first step: the pool owner's environment (its streams are attached as the arguments arrive),
    then the pool's own initializer."""
    os.environ.clear()
    os.environ.update(environment)
    threads = library_threads()
    if threads:  # the pools of what the server loaded were sized by the first pool's environment, not this one's
        set_library_threads(threads)
    if initializer is not None:
        initializer(*initargs)


@functools.cache
def _stop_server_at_exit() -> None:
    """Once per process: stop the fork server at exit and wait for it (multiprocessing leaves it to notice this
    process is gone, never waited for). ``_stop`` is CPython's own (3.8 to 3.13); without it the server still
    ends by itself."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        atexit.register(stop)


def process_pool(workers: int, preload: Sequence[str], initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes whose jobs need the modules ``preload`` (imported once, by the server).

    Args:
        workers: worker processes.
        preload: modules the workers' jobs import (the jobs' functions and what they read); the first pool of a
            process starts the server with them, later pools reuse it (a module it lacks is imported per worker).
        initializer: run in each worker first (module-level: workers find it by name), with ``initargs``.
    Returns:
        The executor (a context manager; leaving it waits for the workers).
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        _stop_server_at_exit()
        context.set_forkserver_preload(list(preload))  # read when the server starts: the first pool's
        sys.stdout.flush()
        sys.stderr.flush()
        streams: Any = tuple(_Stream(fd) for fd in (1, 2) if _is_open(fd))
    else:  # a spawned worker inherits them
        context, streams = multiprocessing.get_context("spawn"), None
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                               initargs=(dict(os.environ), streams, initializer, initargs))
