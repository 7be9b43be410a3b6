"""Running a command with a time limit that holds for everything it starts.

``subprocess.run(timeout=...)`` kills only the direct child: `dvc repro` would die while the stage it
launched kept training. Here the command gets its own process group, and on timeout the whole group
is stopped (SIGTERM, then SIGKILL), so nothing it started outlives the limit.

``TLOPS_RESUME=1`` in a stage's environment is the orchestrator's request to continue from the stage's
checkpoint: the retrain flow sets it when it retries a killed stage in the same worktree.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["CommandTimeout", "run_command", "RESUME_ENV", "resume_requested"]
_GRACE_S = 10.0  # between SIGTERM and SIGKILL
RESUME_ENV = "TLOPS_RESUME"


def resume_requested() -> bool:
    """True when the orchestrator asks a training stage to continue from its checkpoint (a retry)."""
    return os.environ.get(RESUME_ENV) == "1"


class CommandTimeout(RuntimeError):
    """A command ran past its limit and was stopped with every process it started."""


def run_command(args: Sequence[str], cwd: str | Path, *, timeout: float | None, limit_name: str,
                env: Mapping[str, str] | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd``; stop its whole process group after ``timeout`` seconds.

    Args:
        args: the command.
        cwd: where it runs.
        timeout: seconds it may take (None: no limit).
        limit_name: the param that sets the limit, for the message (e.g. ``orchestrate.stage_timeout_s``).
        env: its environment (default: this one).
        capture: capture stdout/stderr as text (otherwise they go to this process's).
    Returns:
        The completed process.
    Raises:
        CommandTimeout: past the limit; the message names the command, the limit and its param, and
            ends with the command's last output lines.
    """
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(list(args), cwd=cwd, env=dict(env) if env is not None else None, stdout=pipe,
                            stderr=pipe, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _stop_group(proc)
        tail = "\n".join(((out or "") + (err or "")).strip().splitlines()[-10:])
        raise CommandTimeout(f"`{' '.join(map(str, args[:4]))}` in {cwd} ran past {timeout:g} s ({limit_name}) and "
                             f"was stopped with every process it started" + (f"; its last lines:\n{tail}" if tail
                                                                              else "")) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stop_group(proc: subprocess.Popen) -> tuple[str | None, str | None]:
    for sig, wait in ((signal.SIGTERM, _GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.communicate()
