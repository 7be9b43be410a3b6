"""One command, one set of processes: whatever ends the wait (a time limit, an exception raised by a signal
handler as Prefect's cancel and flow timeout do, an exception injected into the waiting thread as a lost
concurrency lease does, the caller SIGKILLed), nothing the command started is left running."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipeline.common import processes
from pipeline.common.processes import run_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the guard is Linux-only")

# a shell with two background children, one of them a python that ignores SIGTERM (only SIGKILL ends it);
# every pid is written to pids.txt once all are running
FAMILY = textwrap.dedent("""\
    {python} -c 'import os, signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open("stubborn.pid", "w").write(str(os.getpid()))
    time.sleep(300)' &
    sleep 300 &
    sleeper=$!
    while [ ! -s stubborn.pid ]; do sleep 0.05; done
    echo "$$ $sleeper $(cat stubborn.pid)" > pids.tmp && mv pids.tmp pids.txt
    sleep 300
""")


class Interrupted(BaseException):
    """Stands for Prefect's TerminationSignal / CancelledError: a BaseException, not an Exception."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return False


def _family(tmp_path: Path) -> list[str]:
    (tmp_path / "family.sh").write_text(FAMILY.format(python=sys.executable))
    return ["sh", "family.sh"]


def _pids_when_running(tmp_path: Path, timeout: float = 60) -> list[int]:
    pids = tmp_path / "pids.txt"
    deadline = time.monotonic() + timeout
    while not pids.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pids} never appeared")
        time.sleep(0.05)
    return [int(pid) for pid in pids.read_text().split()]


def _raise_in_main_thread_once_running(tmp_path: Path, exc: BaseException) -> list[int]:
    """Arm SIGALRM to raise ``exc`` (as Prefect's handlers raise) and fire it once the family runs."""
    seen: list[int] = []

    def handler(signum, frame):
        raise exc

    def fire():
        seen.extend(_pids_when_running(tmp_path))
        os.kill(os.getpid(), signal.SIGALRM)

    signal.signal(signal.SIGALRM, handler)
    threading.Thread(target=fire, daemon=True).start()
    return seen


@pytest.fixture
def short_grace(monkeypatch):
    monkeypatch.setattr(processes, "_GRACE_S", 2.0)  # the stubborn child costs one grace period


@pytest.mark.parametrize("streaming", [False, True], ids=["captured", "streamed"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), Interrupted(), RuntimeError("lease lost")],
                         ids=["KeyboardInterrupt", "BaseException", "Exception"])
def test_an_interrupted_command_is_stopped_with_everything_it_started(tmp_path, short_grace, exc, streaming):
    previous = signal.getsignal(signal.SIGALRM)
    try:
        seen = _raise_in_main_thread_once_running(tmp_path, exc)
        with pytest.raises(type(exc)):
            run_command(_family(tmp_path), tmp_path, timeout=None, limit_name="test",
                        on_line=(lambda line: None) if streaming else None)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert len(seen) == 3
    assert [pid for pid in seen if _alive(pid)] == []  # gone by the time the exception reached the caller


def test_an_exception_injected_into_the_waiting_thread_lands_and_stops_the_command(tmp_path, short_grace):
    """Prefect cancels a thread (a lost concurrency lease, a flow timeout off the main thread) by injecting
    an exception that is raised only when the thread runs Python code: the wait must not block for good."""
    outcome: list[BaseException] = []

    def call():
        try:
            run_command(_family(tmp_path), tmp_path, timeout=None, limit_name="test")
        except BaseException as err:  # noqa: BLE001 (the test inspects what arrived)
            outcome.append(err)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    pids = _pids_when_running(tmp_path)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(Interrupted))
    worker.join(120)
    assert not worker.is_alive(), "the injected exception never landed: the wait blocked"
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted), outcome
    assert [pid for pid in pids if _alive(pid)] == []


def test_nothing_survives_the_caller_being_sigkilled(tmp_path):
    caller = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        from pipeline.common import processes
        processes._GRACE_S = 2.0
        processes.run_command({_family(tmp_path)!r}, {str(tmp_path)!r}, timeout=None, limit_name="test")
        """)], cwd=Path(__file__).resolve().parents[1])
    try:
        pids = _pids_when_running(tmp_path)
    finally:
        caller.kill()  # SIGKILL: no handler, no cleanup in the caller
        caller.wait()
    deadline = time.monotonic() + 60  # the guard's grace (2 s) for the stubborn child, then SIGKILL
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if _alive(pid)] == []


@pytest.mark.parametrize("script, code", [("exit 0", 0), ("exit 3", 3), ("exit 75", 75), ("kill -9 $$", -9),
                                          ("kill -15 $$", -15)])
def test_the_command_s_own_exit_status_comes_through(tmp_path, script, code):
    assert run_command(["sh", "-c", script], tmp_path, timeout=30, limit_name="test").returncode == code
    assert run_command(["sh", "-c", script], tmp_path, timeout=30, limit_name="test",
                       on_line=lambda line: None).returncode == code


def test_a_command_that_cannot_start_names_itself(tmp_path):
    proc = run_command(["no-such-command-here"], tmp_path, timeout=30, limit_name="test")
    assert proc.returncode == 127 and "cannot run 'no-such-command-here'" in proc.stderr


def test_the_time_limit_still_stops_the_whole_group_and_names_its_param(tmp_path, short_grace):
    with pytest.raises(processes.CommandTimeout, match=r"ran past 5 s \(orchestrate.stage_timeout_s\)"):
        run_command(_family(tmp_path), tmp_path, timeout=5, limit_name="orchestrate.stage_timeout_s")
    assert [pid for pid in _pids_when_running(tmp_path) if _alive(pid)] == []
