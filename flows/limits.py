"""The limits every run keeps to: its overall time (``orchestrate.flow_timeout_s``) and its wait for the
training slot (``orchestrate.slot_timeout_s``).

They are read from params.yaml when the run starts, inside the flow, so they hold however the run was
started (`make run`, `serve`, a worker), and a changed params.yaml needs no new deployment: a flow's
``timeout_seconds`` set with ``with_options`` when deploying would not reach the run, whose process
imports the flow from its entrypoint.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect.concurrency.sync import concurrency
from prefect.utilities.timeout import timeout

from pipeline.config import OrchestrateParams

__all__ = ["run_time_limit", "training_slot", "RunTimedOut", "SlotUnavailable"]


class RunTimedOut(TimeoutError):
    """A run went past ``orchestrate.flow_timeout_s``; the stage it was running was stopped with its processes.

    A TimeoutError, so Prefect marks the run TimedOut (a failure: the on_failure hooks run).
    """


class SlotUnavailable(RuntimeError):
    """A retrain run waited ``orchestrate.slot_timeout_s`` for the training slot without getting it."""


@contextlib.contextmanager
def run_time_limit(orchestrate: OrchestrateParams, what: str) -> Iterator[None]:
    """Stop the block after ``orchestrate.flow_timeout_s`` seconds.

    Prefect's timeout raises in the flow's thread (an alarm in the main thread, an injected exception
    elsewhere), as its cancel does; a stage's command (pipeline/common/processes.py) stops its processes
    before the exception moves on, so the run's slot is released only once nothing of it runs.

    Args:
        orchestrate: the project's orchestrate params.
        what: the run, for the message (e.g. ``retrain run 2026-12-05-...``).
    Raises:
        RunTimedOut: naming the run, the limit and its param.
    """
    try:
        with timeout(seconds=orchestrate.flow_timeout_s, timeout_exc_type=RunTimedOut):
            yield
    except RunTimedOut:
        raise RunTimedOut(f"{what} ran past {orchestrate.flow_timeout_s:g} s (orchestrate.flow_timeout_s) and was "
                          f"stopped with every process of the stage it was running") from None


@contextlib.contextmanager
def training_slot(orchestrate: OrchestrateParams, what: str) -> Iterator[None]:
    """Hold the one slot of ``orchestrate.concurrency_limit`` for the block, waiting at most
    ``orchestrate.slot_timeout_s`` for it.

    Raises:
        SlotUnavailable: not granted in time; names the limit, the wait and its param.
    """
    entered = False
    try:
        with concurrency(orchestrate.concurrency_limit, occupy=1, strict=True,
                         timeout_seconds=orchestrate.slot_timeout_s):
            entered = True
            yield
    except TimeoutError:
        if entered:  # the block's own timeout, not the wait's
            raise
        raise SlotUnavailable(f"{what} waited {orchestrate.slot_timeout_s:g} s (orchestrate.slot_timeout_s) for the "
                              f"{orchestrate.concurrency_limit!r} slot (orchestrate.concurrency_limit) and did not get "
                              f"it: another run held it all that time") from None
