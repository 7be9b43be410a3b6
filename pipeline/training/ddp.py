"""Multi-process training: the same entry point under ``torchrun`` with DistributedDataParallel.

``torchrun --standalone --nproc_per_node N -m pipeline.cli finetune ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on the CPU). Without
those variables everything runs as one process and no process group is made.

``tlops finetune`` starts the ranks itself when ``finetune.nproc_per_node`` (or ``TLOPS_NPROC_PER_NODE``)
asks for more than one process (:func:`processes_wanted`, :func:`torchrun_command`,
:func:`run_torchrun`)::

    tlops finetune ...                      the launcher: waits, forwards SIGTERM/SIGINT/SIGHUP, exits
      python -m pipeline.training.ddp ...   torchrun's agent (torch.distributed.run, same arguments) in its
                                            own session; exits with the ranks' exit code (below)
        python -m pipeline.cli finetune ... one per rank, each in its own session (torchrun's doing)

Each process there dies with its parent (Linux ``PR_SET_PDEATHSIG``): a launcher killed outright (a flow
timeout's SIGKILL, the OOM killer) sends the agent SIGTERM, and it stops its ranks; a rank whose agent
dies gets SIGKILL. A failed rank's exit code
becomes the launcher's: 75 (transient) when a rank exited 75 or was killed by a signal (preempted,
OOM-killed: a retry may succeed, as for one process killed by a signal), else 2 when a rank reported
bad input, else the first failure's code (1: internal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, TransientError
from pipeline.common.processes import signal_name
from pipeline.common.threads import child_env
from pipeline.common.threads import current as current_threads

__all__ = ["DistInfo", "init_distributed", "wrap_ddp", "all_reduce_sum", "barrier", "shutdown", "NPROC_ENV",
           "LAUNCHER_ENV", "under_torchrun", "processes_wanted", "torchrun_command", "run_torchrun", "RanksFailed",
           "ranks_verdict"]

NPROC_ENV = "TLOPS_NPROC_PER_NODE"  # an integer >= 1 or "auto": overrides the nproc_per_node param
LAUNCHER_ENV = "TLOPS_TORCHRUN_LAUNCHER"  # the launching `tlops` process's pid, set for its agent and ranks
_AGENT_ENV = "TLOPS_TORCHRUN_AGENT"  # the agent's pid, for its ranks
_STATUS_ENV = "TLOPS_TORCHRUN_STATUS"  # the file the agent writes its one-line verdict on failed ranks to
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when launched by torchrun.

    Args:
        device: the device chosen for a single process (cuda picks ``cuda:LOCAL_RANK`` here).
    Returns:
        (this process's DistInfo, the device it should use).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    agent = os.environ.get(_AGENT_ENV)
    _die_with_parent(signal.SIGKILL, int(agent) if agent else None)  # a rank never outlives its torchrun agent
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Wrap the trained module in DDP when running multi-process (only trainable params sync)."""
    if not info.active:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all processes (identity for one process)."""
    if info.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


# --- launching the ranks: `tlops finetune` with nproc_per_node > 1 -------------------------------------


class RanksFailed(RuntimeError):
    """A rank failed with an internal error (exit 1, or a code the contract does not name)."""


def under_torchrun() -> bool:
    """True inside a process that torchrun started (RANK / WORLD_SIZE set): it never launches ranks itself."""
    return "RANK" in os.environ or "WORLD_SIZE" in os.environ


def processes_wanted(param: int, device: torch.device, param_name: str) -> tuple[int, str]:
    """How many processes to train with: ``TLOPS_NPROC_PER_NODE`` when set, else the param.

    The variable is an integer >= 1, or ``auto``: one process per CUDA device (1 without CUDA).

    Args:
        param: the params value (e.g. ``finetune.nproc_per_node``).
        device: the device the stage runs on (``select_device(common.device)``).
        param_name: the param's dotted name, for the messages.
    Returns:
        (the number of processes, where it came from in words).
    Raises:
        ValueError: the variable is not an integer >= 1 nor ``auto``; more processes than CUDA devices
            (one per GPU); more than one process on a device DDP does not run on (MPS).
    """
    raw = os.environ.get(NPROC_ENV, "").strip()
    if not raw:
        nproc, source = param, f"{param_name} = {param}"
    elif raw.lower() == "auto":
        nproc = max(torch.cuda.device_count(), 1) if device.type == "cuda" else 1
        source = f"{NPROC_ENV}=auto over {param_name} = {param}"
    else:
        try:
            nproc = int(raw)
        except ValueError:
            nproc = 0
        if nproc < 1:
            raise ValueError(f"{NPROC_ENV}={raw!r}: expected an integer >= 1 or 'auto' (it overrides {param_name})")
        source = f"{NPROC_ENV}={nproc} over {param_name} = {param}"
    if nproc > 1 and device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"{source} asks for {nproc} processes, one per GPU, but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s): set {param_name} (or {NPROC_ENV}) to at most "
                         f"{torch.cuda.device_count()}")
    if nproc > 1 and device.type not in ("cuda", "cpu"):
        raise ValueError(f"{source} asks for {nproc} processes, but DistributedDataParallel runs on "
                         f"CUDA (NCCL) or the CPU (gloo), not on {device.type}; set {param_name} to 1 or "
                         "common.device to cpu")
    return nproc, source


def torchrun_command(nproc: int, module_argv: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node N <module_argv>`` as this package's agent runs it.

    ``python -m pipeline.training.ddp`` is torchrun (``torch.distributed.run``, the same arguments and
    agent) that also exits with the ranks' exit code and dies with its launcher (module docstring).
    """
    return [sys.executable, "-m", "pipeline.training.ddp", "--standalone", "--nproc_per_node", str(nproc),
            *module_argv]


def run_torchrun(command: list[str], env: Mapping[str, str] | None = None) -> None:
    """Run ``command`` (from :func:`torchrun_command`) and wait for it.

    The ranks share this stage's threads (pipeline/common/threads.py): each gets ``OMP_NUM_THREADS`` (and
    ``TLOPS_THREADS``, its share) = the stage's share / N, at least 1 (torchrun alone would set 1).

    The agent runs in its own session, so a signal to this process's group reaches it once, through here:
    SIGTERM, SIGINT and SIGHUP are forwarded to it (it stops its ranks), and once it is gone this process gets
    the signal itself as if nothing had caught it (SIGTERM ends it, SIGINT raises KeyboardInterrupt). If this
    process is killed outright, the agent and its ranks die with it.

    Args:
        command: the agent's command line.
        env: its environment (default: this one).
    Raises:
        TransientError: a rank exited 75 or was killed by a signal, or the agent was killed (exit 75).
        ValueError: a rank reported bad input (exit 2).
        RanksFailed: a rank failed otherwise (exit 1).
    """
    nproc = command[command.index("--nproc_per_node") + 1] if "--nproc_per_node" in command else "?"
    env = {**(os.environ if env is None else env), LAUNCHER_ENV: str(os.getpid())}
    if nproc.isdigit():
        env.update(child_env(max(current_threads() // int(nproc), 1)))
    code, verdict, received = _wait_forwarding_signals(command, env)
    if received:  # stopped on request: end the way the signal would have ended this process
        signal.raise_signal(received[0])
    if code != 0:
        raise _failure(code, verdict, nproc)


def _wait_forwarding_signals(command: list[str], env: dict[str, str]) -> tuple[int, str, list[int]]:
    """Start the agent in its own session and wait for it, forwarding the signals this process gets
    (:func:`run_torchrun`). Returns its exit code, the one-line verdict its ranks' failures left (empty when
    none did) and the signals forwarded."""
    fd, status = tempfile.mkstemp(prefix="tlops-torchrun-", suffix=".txt")
    os.close(fd)
    env = {**env, _STATUS_ENV: status}
    received: list[int] = []
    previous = {}
    try:
        proc = subprocess.Popen(command, env=env, start_new_session=True)

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

        if threading.current_thread() is threading.main_thread():  # (a signal ignored here stays ignored)
            previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED
                        if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code, Path(status).read_text(encoding="utf-8").strip(), received
    finally:
        Path(status).unlink(missing_ok=True)


def _failure(code: int, verdict: str, nproc: str) -> Exception:
    """The error for a torchrun run that ended with ``code`` (:func:`run_torchrun`'s Raises)."""
    if not verdict:
        verdict = (f"torchrun's agent was killed by {signal_name(-code)}" if code < 0
                   else f"torchrun's agent exited with {code} before any rank failed")
    message = f"{verdict} (the {nproc}-process torchrun run of this stage; the ranks' own messages are above)"
    if code == EXIT_TRANSIENT or code < 0:
        return TransientError(message)
    if code == EXIT_BAD_INPUT:
        return ValueError(message)
    return RanksFailed(message)


def ranks_verdict(failures: Mapping[int, object], world_size: int) -> tuple[int, str]:
    """The exit code and one line for torchrun's failed ranks (``ChildFailedError.failures``).

    torchrun lists the ranks in the order it saw them fail, then the ones it stopped itself (SIGTERM)
    once one had failed: those are not causes and are left out.

    Args:
        failures: global rank -> ``ProcessFailure`` (``exitcode``: negative for a signal), in torchrun's order.
        world_size: the number of ranks.
    Returns:
        75 when a rank exited 75 or was killed by a signal (a retry may succeed), else 2 when a rank
        reported bad input, else the first failure's code; and e.g. ``rank 1 of 2 was killed by SIGKILL``.
    """
    items = list(failures.items())
    causes = items[:1] + [(rank, f) for rank, f in items[1:] if f.exitcode != -signal.SIGTERM]
    codes = [failure.exitcode for _, failure in causes]
    parts = [f"rank {rank} of {world_size} " + (f"was killed by {signal_name(-failure.exitcode)}"
                                                if failure.exitcode < 0 else f"exited with {failure.exitcode}")
             for rank, failure in causes]
    if any(code < 0 or code == EXIT_TRANSIENT for code in codes):
        code = EXIT_TRANSIENT
    elif EXIT_BAD_INPUT in codes:
        code = EXIT_BAD_INPUT
    else:
        code = codes[0] if codes else 1
    stopped = len(items) - len(causes)
    others = f" (torchrun then stopped {stopped} other rank{'s' if stopped > 1 else ''})" if stopped else ""
    return code, ("; ".join(parts) or "a rank failed") + others


def _die_with_parent(sig: int, parent: int | None = None) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent ends (no-op elsewhere).

    ``parent``: the pid the parent should have; if it already ended (this process was re-parented before
    the request took effect), ``sig`` comes now.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _agent(argv: list[str]) -> int:
    """``python -m pipeline.training.ddp <torchrun arguments>``: torchrun with the ranks' exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher:
        _die_with_parent(signal.SIGTERM, int(launcher))
    os.environ[_AGENT_ENV] = str(os.getpid())  # the ranks inherit it (they die with this process)
    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as err:
        try:
            world = int(args.nproc_per_node) * int(str(args.nnodes).split(":")[-1])
        except ValueError:
            world = len(err.failures)
        code, line = ranks_verdict(err.failures, world)
        print(f"torchrun: {line}", file=sys.stderr, flush=True)
        status = os.environ.get(_STATUS_ENV)
        if status:
            Path(status).write_text(line + "\n", encoding="utf-8")
        return code
    except SignalException as err:  # the agent has stopped its ranks: now end by the signal, uncaught
        signal.signal(err.sigval, signal.SIG_DFL)
        signal.raise_signal(err.sigval)
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(_agent(sys.argv[1:]))
