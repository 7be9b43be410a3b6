"""Running a command so that nothing it starts outlives its time limit, an interruption, or this process.

``subprocess.run(timeout=...)`` kills only the direct child: `dvc repro` would die while the stage it
launched kept training. Here the command gets its own process group, and the whole group is stopped
(SIGTERM, a grace period, then SIGKILL, and waited for) when:

- the command runs past its limit (:class:`CommandTimeout`);
- anything interrupts the wait: Prefect's cancel (its SIGTERM handler raises ``TerminationSignal`` in
  the main thread), a flow timeout, a lost concurrency lease, Ctrl-C. The exception propagates only once
  the processes are gone, so a ``with concurrency(...)`` around the call releases its slot after them;
- this process dies outright (SIGKILL): on Linux every command starts under a guard
  (pipeline/common/guard.py) that the kernel signals when its parent dies and that then stops the group.

The wait runs in slices of at most a second, so an exception that Prefect injects into a thread (a
lost lease, a flow timeout outside the main thread) lands within a second instead of when the command ends.

``TLOPS_RESUME=1`` in a stage's environment is the orchestrator's request to continue from the stage's
checkpoint: the retrain flow sets it when it retries a killed stage in the same worktree.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

__all__ = ["CommandTimeout", "run_command", "RESUME_ENV", "resume_requested", "signal_name"]
_GRACE_S = 10.0  # between SIGTERM and SIGKILL
_GUARD_MARGIN_S = 5.0  # the guard's own grace plus this, before the group gets SIGKILL from here
_SLICE_S = 1.0  # longest single blocking wait: an exception injected into this thread lands within it
_PROGRESS_EVERY_S = 10.0  # a progress bar redraws in place (\r) many times a second: pass one redraw per this
_LINE_END = re.compile(r"(\r\n|\n|\r)")
_GUARD = Path(__file__).with_name("guard.py")
_GUARDED = sys.platform.startswith("linux")  # the guard needs prctl and /proc; elsewhere the group kill alone
RESUME_ENV = "TLOPS_RESUME"
T = TypeVar("T")


def resume_requested() -> bool:
    """True when the orchestrator asks a training stage to continue from its checkpoint (a retry)."""
    return os.environ.get(RESUME_ENV) == "1"


class CommandTimeout(RuntimeError):
    """A command ran past its limit and was stopped with every process it started."""


def signal_name(number: int) -> str:
    """The name of a signal number (``SIGKILL``), or ``signal <n>`` for one this platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_command(args: Sequence[str], cwd: str | Path, *, timeout: float | None, limit_name: str,
                env: Mapping[str, str] | None = None, capture: bool = True,
                on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd``; stop its whole process group after ``timeout`` seconds or on any interruption.

    Args:
        args: the command.
        cwd: where it runs.
        timeout: seconds it may take (None: no limit).
        limit_name: the param that sets the limit, for the message (e.g. ``orchestrate.stage_timeout_s``).
        env: its environment (default: this one).
        capture: capture stdout/stderr as text (otherwise they go to this process's).
        on_line: called with each line of output while the command runs (stdout and stderr merged, in
            order; a progress bar's in-place redraws at most once per 10 s); the completed process then
            holds all of it in ``stdout``.
    Returns:
        The completed process (``args`` as given; exit status as the command's own). On Linux a command
        that cannot be started (not found) exits 127 with the guard's one line on stderr.
    Raises:
        CommandTimeout: past the limit; the message names the command, the limit and its param, and
            ends with the command's last output lines.
        BaseException: whatever interrupted the wait, re-raised once the command's processes are gone.
    """
    if on_line is not None:
        return _run_streaming(list(args), cwd, timeout=timeout, limit_name=limit_name, env=env, on_line=on_line)
    pipe = subprocess.PIPE if capture else None
    proc = _start(args, cwd, env, stdout=pipe, stderr=pipe, text=True)
    with _stopped_if_interrupted(proc):
        try:
            out, err = _wait(proc.communicate, timeout)
        except subprocess.TimeoutExpired:
            out, err = _stop_group(proc)
            _raise_timeout(args, cwd, timeout, limit_name, (out or "") + (err or ""))
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


def _start(args: Sequence[str], cwd: str | Path, env: Mapping[str, str] | None, **popen) -> subprocess.Popen:
    """Start ``args`` as the leader of a new session (through the guard on Linux)."""
    command = list(args)
    if _GUARDED:
        command = [sys.executable, "-I", "-S", str(_GUARD), "--parent", str(os.getpid()), "--grace", str(_GRACE_S),
                   "--", *command]
    return subprocess.Popen(command, cwd=cwd, env=dict(env) if env is not None else None, start_new_session=True,
                            **popen)


def _wait(finish: Callable[..., T], timeout: float | None) -> T:
    """``finish(timeout=...)`` (communicate or wait) in slices of at most ``_SLICE_S`` until it returns.

    Raises:
        subprocess.TimeoutExpired: ``timeout`` seconds have passed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            return finish(timeout=_SLICE_S if left is None else max(min(_SLICE_S, left), 0.0))
        except subprocess.TimeoutExpired:
            if left is not None and left <= _SLICE_S:
                raise


@contextlib.contextmanager
def _stopped_if_interrupted(proc: subprocess.Popen, close_pipes: bool = True) -> Iterator[None]:
    """Stop the command's group before any exception from the block propagates (a timeout has stopped it).

    ``close_pipes``: close the output pipes first (nobody reads them any more: a writer gets EPIPE instead
    of blocking on a full pipe); False when a reader thread owns them.
    """
    try:
        yield
    except CommandTimeout:
        raise
    except BaseException:
        for stream in (proc.stdout, proc.stderr) if close_pipes else ():
            if stream is not None:
                stream.close()
        try:
            _stop_group(proc, drain=False)
        except BaseException:  # interrupted again while stopping: no grace left
            _kill_group(proc)
            raise
        raise


def _raise_timeout(args: Sequence[str], cwd: str | Path, timeout: float, limit_name: str, output: str) -> None:
    tail = "\n".join(output.strip().splitlines()[-10:])
    raise CommandTimeout(f"`{' '.join(map(str, args[:4]))}` in {cwd} ran past {timeout:g} s ({limit_name}) and "
                         f"was stopped with every process it started" + (f"; its last lines:\n{tail}" if tail
                                                                          else "")) from None


def _run_streaming(args: list[str], cwd: str | Path, *, timeout: float | None, limit_name: str,
                   env: Mapping[str, str] | None, on_line: Callable[[str], None]) -> subprocess.CompletedProcess:
    """run_command with the output handed to ``on_line`` as it comes (a reader thread drains the pipe)."""
    # bytes, not text: text mode would turn a progress bar's \r into a line end, hiding which is which
    proc = _start(args, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks: list[str] = []
    reader = threading.Thread(target=_forward_lines, args=(proc.stdout, chunks, on_line), daemon=True)
    reader.start()
    with _stopped_if_interrupted(proc, close_pipes=False):
        try:
            _wait(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc, drain=False)  # the reader thread drains the pipe
            reader.join()
            _raise_timeout(args, cwd, timeout, limit_name, "".join(chunks))
        while reader.is_alive():  # until the end of the output (a process the command left may still write)
            reader.join(_SLICE_S)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(chunks), "")


def _forward_lines(stream, chunks: list[str], on_line: Callable[[str], None]) -> None:
    """Read ``stream`` to its end into ``chunks``, passing each finished line to ``on_line``."""
    pending, last_redraw = "", 0.0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for data in iter(lambda: stream.read1(65536), b""):
        text = decoder.decode(data)
        chunks.append(text)
        parts = _LINE_END.split(pending + text)
        pending = parts.pop()  # the unfinished tail waits for its line end
        for line, end in zip(parts[0::2], parts[1::2]):
            if not line.strip():
                continue
            if end == "\r":  # a redraw in place: forward one now and then, not each
                if time.monotonic() - last_redraw < _PROGRESS_EVERY_S:
                    continue
                last_redraw = time.monotonic()
            on_line(line)
    if pending.strip():
        on_line(pending)
    stream.close()


def _stop_group(proc: subprocess.Popen, drain: bool = True) -> tuple[str | None, str | None]:
    """Stop the command's process group: SIGTERM, SIGKILL after the grace period; ``drain``: read its output.

    Under the guard, SIGTERM goes to the guard alone: it stops the group and every descendant itself
    (TERM, its grace, KILL) and exits; the group gets SIGKILL from here only if the guard has not ended
    by then. Without it (or once the command has ended, leaving processes behind) the group is signalled.
    """
    finish = proc.communicate if drain else (lambda timeout=None: (proc.wait(timeout=timeout), None))
    if _GUARDED and proc.poll() is None:
        steps = ((lambda: proc.send_signal(signal.SIGTERM), _GRACE_S + _GUARD_MARGIN_S),
                 (lambda: os.killpg(proc.pid, signal.SIGKILL), None))
    else:
        steps = ((lambda: os.killpg(proc.pid, signal.SIGTERM), _GRACE_S),
                 (lambda: os.killpg(proc.pid, signal.SIGKILL), None))
    for send, wait in steps:
        try:
            send()
        except ProcessLookupError:
            break
        try:
            return finish(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return finish()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group at once and reap its leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
