"""Running a command with a time limit that holds for everything it starts.

``subprocess.run(timeout=...)`` kills only the direct child: `dvc repro` would die while the stage it
launched kept training. Here the command gets its own process group, and on timeout the whole group
is stopped (SIGTERM, then SIGKILL), so nothing it started outlives the limit.

``TLOPS_RESUME=1`` in a stage's environment is the orchestrator's request to continue from the stage's
checkpoint: the retrain flow sets it when it retries a killed stage in the same worktree.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

__all__ = ["CommandTimeout", "run_command", "RESUME_ENV", "resume_requested"]
_GRACE_S = 10.0  # between SIGTERM and SIGKILL
_PROGRESS_EVERY_S = 10.0  # a progress bar redraws in place (\r) many times a second: pass one redraw per this
_LINE_END = re.compile(r"(\r\n|\n|\r)")
RESUME_ENV = "TLOPS_RESUME"


def resume_requested() -> bool:
    """True when the orchestrator asks a training stage to continue from its checkpoint (a retry)."""
    return os.environ.get(RESUME_ENV) == "1"


class CommandTimeout(RuntimeError):
    """A command ran past its limit and was stopped with every process it started."""


def run_command(args: Sequence[str], cwd: str | Path, *, timeout: float | None, limit_name: str,
                env: Mapping[str, str] | None = None, capture: bool = True,
                on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd``; stop its whole process group after ``timeout`` seconds.

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
        The completed process.
    Raises:
        CommandTimeout: past the limit; the message names the command, the limit and its param, and
            ends with the command's last output lines.
    """
    if on_line is not None:
        return _run_streaming(list(args), cwd, timeout=timeout, limit_name=limit_name, env=env, on_line=on_line)
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(list(args), cwd=cwd, env=dict(env) if env is not None else None, stdout=pipe,
                            stderr=pipe, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _stop_group(proc)
        _raise_timeout(args, cwd, timeout, limit_name, (out or "") + (err or ""))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _raise_timeout(args: Sequence[str], cwd: str | Path, timeout: float, limit_name: str, output: str) -> None:
    tail = "\n".join(output.strip().splitlines()[-10:])
    raise CommandTimeout(f"`{' '.join(map(str, args[:4]))}` in {cwd} ran past {timeout:g} s ({limit_name}) and "
                         f"was stopped with every process it started" + (f"; its last lines:\n{tail}" if tail
                                                                          else "")) from None


def _run_streaming(args: list[str], cwd: str | Path, *, timeout: float | None, limit_name: str,
                   env: Mapping[str, str] | None, on_line: Callable[[str], None]) -> subprocess.CompletedProcess:
    """run_command with the output handed to ``on_line`` as it comes (a reader thread drains the pipe)."""
    # bytes, not text: text mode would turn a progress bar's \r into a line end, hiding which is which
    proc = subprocess.Popen(args, cwd=cwd, env=dict(env) if env is not None else None, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[str] = []
    reader = threading.Thread(target=_forward_lines, args=(proc.stdout, chunks, on_line), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc, drain=False)  # the reader thread drains the pipe
        reader.join()
        _raise_timeout(args, cwd, timeout, limit_name, "".join(chunks))
    reader.join()
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
    """SIGTERM the command's process group, SIGKILL it after the grace period; ``drain``: read its output."""
    finish = proc.communicate if drain else (lambda timeout=None: (proc.wait(timeout=timeout), None))
    for sig, wait in ((signal.SIGTERM, _GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return finish(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return finish()
