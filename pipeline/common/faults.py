"""Named kill points for the fault-injection suite: a process kills itself with SIGKILL at a chosen step.

A test sets ``TLOPS_KILL_AT=<point>[,<point>...]`` and ``TLOPS_KILL_FLAGS=<folder>``. The first process
to reach a named point leaves the flag ``<folder>/<point>`` and sends itself SIGKILL: the kernel's kill,
nothing flushed or cleaned up, as with a power cut, a preempted node or the OOM killer. Later attempts
find the flag and pass, so the retry that follows can finish the job. Without both variables a point
does nothing. The points sit where a kill would do the most harm:

    promote.registered   the version is registered, the champion pointer not yet moved
    promote.swapped      the champion pointer moved, the decision not yet written
    evaluate.report      metrics and figures written, the HTML report not yet
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["kill_point", "KILL_AT_ENV", "KILL_FLAGS_ENV"]
KILL_AT_ENV = "TLOPS_KILL_AT"
KILL_FLAGS_ENV = "TLOPS_KILL_FLAGS"


def kill_point(name: str) -> None:
    """SIGKILL this process here, once, when ``TLOPS_KILL_AT`` names ``name`` (see the module docstring)."""
    points, flags = os.environ.get(KILL_AT_ENV), os.environ.get(KILL_FLAGS_ENV)
    if not points or not flags or name not in points.split(","):
        return
    try:
        os.close(os.open(Path(flags) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # killed here before: this is the retry
        return
    os.kill(os.getpid(), signal.SIGKILL)
