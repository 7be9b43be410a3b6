"""`tlops finetune` under torchrun: 2 CPU processes (gloo, DistributedDataParallel) match 1 process; with
`finetune.nproc_per_node: 2` (or TLOPS_NPROC_PER_NODE=2) `tlops finetune` starts those 2 processes itself;
a failed or killed rank gives the stage the exit code the flow's retry policy reads; a signal to the
launcher reaches every rank."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from pipeline.cli import main
from pipeline.common.errors import TransientError
from pipeline.config import load_params
from pipeline.stages import finetune
from pipeline.training import ddp
from pipeline.training.ddp import NPROC_ENV, RanksFailed, processes_wanted, run_torchrun, torchrun_command
from tests.support.training_data import TINY_MODEL, write_dataset, write_selection

TORCHRUN = Path(sys.executable).with_name("torchrun")
TLOPS = Path(sys.executable).with_name("tlops")
PARAMS = """
common: {image_size: 32, seed: 0}
freeze: {strategy: partial, depth: 3, epochs: 2, lr: 0.003}
train: {batch_size: 16, eval_batch_size: 64, augment: none}
finetune: {patience: 0}
"""
# a rank that does what its argument says: sleep (after joining the gloo group), exit N, or die by SIGKILL
RANK_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
rank, mode = int(os.environ["RANK"]), sys.argv[1]
if mode == "sleep":
    import torch
    from pipeline.training.ddp import init_distributed
    init_distributed(torch.device("cpu"))
Path(f"rank{rank}.pid").write_text(str(os.getpid()))
if mode == "sleep":
    time.sleep(300)
elif rank == 1:
    os.kill(os.getpid(), signal.SIGKILL) if mode == "kill" else sys.exit(int(mode))
time.sleep(0 if mode == "0" else 60)
"""
ENV = {"TLOPS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _finetune(launcher: list[str], root: Path, out: str, env: dict | None = None,
              extra: tuple[str, ...] = ()) -> tuple[dict, subprocess.CompletedProcess]:
    argv = ["finetune", "--dataset", "ds", "--plan", "plan.json", "--model-dir", f"{out}/model",
            "--metrics", f"{out}/metrics.json", "--history", f"{out}/history.csv", "--plot", f"{out}/curves.png",
            "--checkpoints", f"{out}/ckpt", *extra]
    if launcher[0] != str(TLOPS):
        argv = ["-m", "pipeline.cli", *argv]
    base = {k: v for k, v in os.environ.items() if k not in (NPROC_ENV, "TLOPS_RESUME")}
    done = subprocess.run([*launcher, *argv], cwd=root, env={**base, **ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / out / "metrics.json").read_text()), done


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """A tiny dataset and freeze plan, plus the 1-process and the hand-started 2-process fine-tunes of it."""
    root = tmp_path_factory.mktemp("ddp")
    assert TORCHRUN.is_file(), f"{TORCHRUN} missing"
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(PARAMS)
    (root / "params2.yaml").write_text(PARAMS.replace("patience: 0}", "patience: 0, nproc_per_node: 2}"))
    write_dataset(root / "ds", {"train": 48, "val": 24})
    write_selection(root / "selection.json", TINY_MODEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["freeze", "--dataset", "ds", "--selection", "selection.json", "--plan", "plan.json",
                     "--metrics", "freeze_metrics.json"]) == 0
    single, _ = _finetune([sys.executable], root, "one")
    double, _ = _finetune([str(TORCHRUN), "--standalone", "--nproc_per_node", "2"], root, "two")
    return {"root": root, "single": single, "double": double}


def _same_run(metrics: dict, reference: dict) -> None:
    for key in ("world_size", "epochs_run", "best_epoch", "val_accuracy"):
        assert metrics[key] == reference[key], key
    assert metrics["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(frozen):
    single, double = frozen["single"], frozen["double"]
    assert (single["world_size"], double["world_size"]) == (1, 2)
    # same global batch and sample order: the two runs differ only by float reduction order
    assert double["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=1 / 24 + 1e-9)
    assert double["val_loss"] == pytest.approx(single["val_loss"], rel=0.02)
    assert single["val_accuracy"] > 0.5, "training must learn something for the comparison to mean anything"


@pytest.mark.slow
def test_nproc_per_node_param_makes_tlops_finetune_start_torchrun_itself(frozen):
    """`tlops finetune` with `finetune.nproc_per_node: 2`, no torchrun on the command line: the hand-started run."""
    metrics, done = _finetune([str(TLOPS)], frozen["root"], "auto", extra=("--params", "params2.yaml"))
    _same_run(metrics, frozen["double"])
    assert "launched under torchrun with 2 processes (finetune.nproc_per_node = 2; DDP, gloo on the CPU)" in done.stderr
    assert json.loads(done.stdout)["world_size"] == 2  # one summary on stdout: rank 0's


@pytest.mark.slow
def test_env_overrides_the_param_and_resume_passes_through(frozen):
    """TLOPS_NPROC_PER_NODE=2 over `nproc_per_node: 1`; TLOPS_RESUME=1 reaches the ranks: they continue from
    the hand-started run's last checkpoint (same params and data) and end where it ended."""
    root = frozen["root"]
    shutil.copytree(root / "two/ckpt", root / "env/ckpt")
    metrics, done = _finetune([str(TLOPS)], root, "env", env={NPROC_ENV: "2", "TLOPS_RESUME": "1"})
    assert f"launched under torchrun with 2 processes ({NPROC_ENV}=2 over finetune.nproc_per_node = 1" in done.stderr
    assert "resuming at phase" in done.stderr
    _same_run(metrics, frozen["double"])


# --- the number of processes ------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(None, 3), ("1", 1), ("4", 4), ("auto", 1), (" AUTO ", 1)])
def test_processes_wanted_on_the_cpu(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(NPROC_ENV, raising=False)
    else:
        monkeypatch.setenv(NPROC_ENV, value)
    assert processes_wanted(3, torch.device("cpu"), "finetune.nproc_per_node")[0] == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_override_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(NPROC_ENV, value)
    with pytest.raises(ValueError, match=f"{NPROC_ENV}=.*integer >= 1 or 'auto'.*finetune.nproc_per_node"):
        processes_wanted(1, torch.device("cpu"), "finetune.nproc_per_node")


def test_more_processes_than_gpus_is_one_line_naming_the_param(monkeypatch):
    monkeypatch.delenv(NPROC_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert processes_wanted(2, torch.device("cuda"), "finetune.nproc_per_node")[0] == 2
    with pytest.raises(ValueError) as err:
        processes_wanted(4, torch.device("cuda"), "finetune.nproc_per_node")
    assert "\n" not in str(err.value)
    assert str(err.value) == ("finetune.nproc_per_node = 4 asks for 4 processes, one per GPU, but this machine has 2 "
                              "CUDA device(s): set finetune.nproc_per_node (or TLOPS_NPROC_PER_NODE) to at most 2")
    monkeypatch.setenv(NPROC_ENV, "auto")
    assert processes_wanted(1, torch.device("cuda"), "finetune.nproc_per_node")[0] == 2  # one per GPU
    monkeypatch.delenv(NPROC_ENV)
    with pytest.raises(ValueError, match="not on mps"):
        processes_wanted(2, torch.device("mps"), "finetune.nproc_per_node")


def test_launch_only_outside_torchrun(monkeypatch, tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS.replace("patience: 0}", "patience: 0, nproc_per_node: 2}"))
    params = load_params(tmp_path / "params.yaml")
    monkeypatch.delenv(NPROC_ENV, raising=False)
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert callable(finetune.launch(params, ["--dataset", "ds"]))
    monkeypatch.setenv(NPROC_ENV, "1")
    assert finetune.launch(params, ["--dataset", "ds"]) is None  # the variable wins, either way
    monkeypatch.setenv(NPROC_ENV, "2")
    monkeypatch.setenv("RANK", "0")
    assert finetune.launch(params, ["--dataset", "ds"]) is None  # a rank never launches ranks


def test_the_command_is_torchrun_standalone_with_the_same_arguments():
    command = torchrun_command(2, ["-m", "pipeline.cli", "finetune", "--resume"])
    assert command == [sys.executable, "-m", "pipeline.training.ddp", "--standalone", "--nproc_per_node", "2",
                       "-m", "pipeline.cli", "finetune", "--resume"]


# --- failed ranks and signals -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode, error, code, line", [
    ("75", TransientError, 75, "rank 1 of 2 exited with 75"),
    ("2", ValueError, 2, "rank 1 of 2 exited with 2"),
    ("1", RanksFailed, 1, "rank 1 of 2 exited with 1"),
    ("kill", TransientError, 75, "rank 1 of 2 was killed by SIGKILL"),
])
def test_a_failed_rank_gives_its_exit_code(tmp_path, monkeypatch, capfd, mode, error, code, line):
    """The agent exits with the failed rank's code (a rank killed by a signal: 75, a retry may succeed); the
    launcher raises what the CLI turns into that exit code; the rank torchrun stopped after it is no cause."""
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=line) as raised:
        run_torchrun(torchrun_command(2, ["rank.py", mode]))
    assert type(raised.value) is error
    assert f"torchrun: {line} (torchrun then stopped 1 other rank)" in capfd.readouterr().err  # the agent's line


@pytest.mark.slow
def test_bad_input_in_the_ranks_is_exit_2_of_tlops_finetune(frozen):
    """The CLI turns the ranks' failure into its own exit code and one last line naming the ranks."""
    base = {k: v for k, v in os.environ.items() if k != NPROC_ENV}
    done = subprocess.run([str(TLOPS), "finetune", "--params", "params2.yaml", "--dataset", "ds", "--plan",
                           "missing.json", "--model-dir", "bad/model", "--metrics", "bad/metrics.json", "--history",
                           "bad/history.csv", "--plot", "bad/curves.png", "--checkpoints", "bad/ckpt"],
                          cwd=frozen["root"], env={**base, **ENV}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert "missing.json" in done.stderr  # each rank's own message
    assert lines[-1].startswith("tlops finetune: error: rank ") and "exited with 2" in lines[-1], lines[-1]
    assert "the 2-process torchrun run of this stage" in lines[-1]
    assert not (frozen["root"] / "bad").exists()


def _start_sleeping_ranks(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """A launcher (run_torchrun, as `tlops finetune` calls it) whose two ranks joined gloo and sleep."""
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    code = ("import sys; from pipeline.training.ddp import run_torchrun, torchrun_command; "
            "run_torchrun(torchrun_command(2, ['rank.py', 'sleep']))")
    launcher = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV},
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"rank{r}.pid").is_file() for r in (0, 1)):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-2000:]
        time.sleep(0.2)
    return launcher, [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)]


def _gone(pids: list[int], within: float = 30) -> bool:
    """Whether every process ended (an orphan's zombie counts: a container's init may never reap it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("target, sig", [("group", signal.SIGTERM), ("launcher", signal.SIGKILL),
                                         ("agent", signal.SIGKILL)])
def test_a_signal_to_the_launcher_reaches_every_rank(tmp_path, target, sig):
    """A flow timeout SIGTERMs the stage's process group: the launcher forwards it and then ends by it.
    A launcher killed outright takes the agent and the ranks with it; so does an agent killed outright."""
    launcher, ranks = _start_sleeping_ranks(tmp_path)
    try:
        agent = psutil.Process(launcher.pid).children()[0].pid
        if target == "group":
            os.killpg(launcher.pid, sig)  # what run_command does on timeout (the agent has its own session)
        else:
            os.kill(launcher.pid if target == "launcher" else agent, sig)
        launcher.wait(timeout=60)
        assert _gone([agent, *ranks]), "a rank or the agent outlived the launcher"
        if target == "agent":  # the launcher lives on and says what happened
            assert launcher.returncode == 1
            assert "TransientError: torchrun's agent was killed by SIGKILL" in launcher.stderr.read()
        else:
            assert launcher.returncode == -sig
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_ranks_verdict_leaves_out_the_ranks_torchrun_stopped():
    class Failure:
        def __init__(self, exitcode):
            self.exitcode = exitcode

    stopped = -int(signal.SIGTERM)
    assert ddp.ranks_verdict({1: Failure(2), 0: Failure(stopped)}, 2) == (
        2, "rank 1 of 2 exited with 2 (torchrun then stopped 1 other rank)")
    # an OOM-killed rank and its peer's broken collective: the kill decides (transient)
    assert ddp.ranks_verdict({0: Failure(1), 1: Failure(-9)}, 2)[0] == 75
    assert ddp.ranks_verdict({1: Failure(stopped), 0: Failure(stopped)}, 2)[0] == 75  # killed from outside
    assert ddp.ranks_verdict({0: Failure(1), 1: Failure(stopped), 2: Failure(stopped)}, 3) == (
        1, "rank 0 of 3 exited with 1 (torchrun then stopped 2 other ranks)")
