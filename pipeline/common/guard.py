"""A command's guard (Linux): ``python -I -S guard.py --parent PID --grace S -- command...``.

:func:`pipeline.common.processes.run_command` starts every command through this guard, which leads the
command's process group (and session) and makes sure nothing of it outlives the process that started it:

- It asks the kernel for SIGTERM when its parent ends (``prctl(PR_SET_PDEATHSIG)``), so a flow process
  that is SIGKILLed (the runner's last resort after a cancel, the OOM killer, a worker killed outright)
  still takes its stage with it. It checks ``getppid()`` after asking: a parent that ended before the
  request took effect counts as ended. The kernel sends the signal when the parent *thread* that
  started the guard ends, not only the process: run_command's caller thread waits for the command, so
  that thread outlives it, but a caller that started it from a short-lived thread and went on would
  see the command stopped when that thread ends.
- It is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process whose parent dies is re-parented to
  the guard, not to init, so it stays findable among the guard's descendants even after it moved to a
  session of its own (torchrun's agent and ranks do).
- On SIGTERM, SIGINT or SIGHUP (run_command stopping the command, the parent's death) it sends SIGTERM
  to its process group, waits up to ``--grace`` seconds for the group and every descendant to end, sends
  SIGKILL to what is left, waits for that, and exits with 128 + the signal's number.

Otherwise it waits for the command and ends the way the command ended: the same exit status, or killed
by the same signal (so a stage killed by SIGKILL still reads as killed to pipeline/runs/workspace.py). A
command that cannot be started exits 127 with one line naming it.

Standard library only, and ``-I -S`` (no PYTHONPATH, no site-packages): it starts in milliseconds and does not
import the ``pipeline`` package of a run's worktree (which may predate this file).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time

__all__ = ["main", "members"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_POLL_S = 0.05
_KILL_WAIT_S = 10.0  # after SIGKILL: a process in uninterruptible I/O ends once the I/O does
_EXIT_NOT_STARTED = 127


def members(leader: int) -> list[int]:
    """The live processes of ``leader``'s process group and of its descendant tree, ``leader`` excluded.

    Read from /proc (zombies left out: they have ended, and their parent or this guard reaps them).
    """
    children: dict[int, list[int]] = {}
    group: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # ended meanwhile
            continue
        if fields[0] in (b"Z", b"X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        if int(fields[2]) == leader:
            group.add(int(entry))
    frontier, seen = [leader, *group], {leader, *group}
    while frontier:  # everything descended from the guard or from a member of its group
        for pid in children.get(frontier.pop(), []):
            if pid not in seen:
                seen.add(pid)
                frontier.append(pid)
    seen.discard(leader)
    return sorted(seen)


def _reap() -> None:
    """Collect every ended child (orphans re-parented here included), so none lingers as a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _stop_all(grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` s for it and every descendant to end, SIGKILL what is left."""
    me = os.getpid()
    try:
        os.killpg(me, signal.SIGTERM)  # this process ignores SIGTERM by now
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while True:
        _reap()
        left = members(me)
        if not left:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    deadline = time.monotonic() + _KILL_WAIT_S
    while left and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(_POLL_S)
        _reap()
        left = members(me)


def _die_with_parent(parent: int) -> bool:
    """Ask for SIGTERM when the parent ends and become a subreaper; False if the parent has ended already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the group kill by run_command still holds
        pass
    return os.getppid() == parent


def _end_like(status: int) -> None:
    """Exit as a child with wait status ``status`` did: the same code, or killed by the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the command's crash, not a core of this guard
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught: no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not end a process (none should reach here)
    os._exit(os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    """Parse ``--parent PID --grace S -- command...``, run the command under guard, exit as it did."""
    if "--" not in argv:
        sys.exit("usage: guard.py --parent PID --grace SECONDS -- command [args...]")
    split = argv.index("--")
    options, command = dict(zip(argv[:split:2], argv[1:split:2])), argv[split + 1:]
    if not command or "--parent" not in options or "--grace" not in options:
        sys.exit("usage: guard.py --parent PID --grace SECONDS -- command [args...]")
    parent, grace = int(options["--parent"]), float(options["--grace"])
    if os.getpgrp() != os.getpid():  # run without a session of its own: make one, the group it will stop
        os.setsid()

    def stop(signum: int, frame: object) -> None:
        for sig in _STOP_SIGNALS:  # a second request must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        _stop_all(grace)
        os._exit(128 + signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    if not _die_with_parent(parent):
        stop(signal.SIGTERM, None)
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"guard.py: cannot run {command[0]!r}: {err}", file=sys.stderr, flush=True)
        os._exit(_EXIT_NOT_STARTED)
    while True:
        pid, status = os.waitpid(child.pid, 0)  # a stop signal interrupts this and never returns
        if pid == child.pid:
            _end_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
