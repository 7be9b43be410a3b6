"""Versioned runs: worktree per run, DVC decides what re-runs, tags restore a run exactly."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from pipeline.common.errors import TransientError
from pipeline.config import ConfigError
from pipeline.common.run_names import run_name
from pipeline.config import OrchestrateParams
from pipeline.runs.workspace import RunWorkspace, StageFailed, prune_runs, push_waits, release_run

# A toy stage with the same shape as the real ones (deps, params, cached outs and metrics), so the
# versioning mechanics are tested in seconds without training anything.
TOY_STAGE = {
    "cmd": f"{sys.executable} -P toy.py",  # -P: like the `tlops` script, no script folder on sys.path
    "deps": ["toy.py"],
    "params": ["common"],
    "outs": ["data/toy"],
    "metrics": ["results/toy/metrics.json"],
}
TOY_SCRIPT = """
import json, os, pathlib, time, yaml
import pipeline
seed = yaml.safe_load(open("params.yaml"))["common"]["seed"]
if seed == 17:  # a stage that hangs
    pathlib.Path("stage.pid").write_text(str(os.getpid()))
    time.sleep(300)
pathlib.Path("data/toy").mkdir(parents=True, exist_ok=True)
pathlib.Path("data/toy/value.txt").write_text(str(seed * 7))
pathlib.Path("results/toy").mkdir(parents=True, exist_ok=True)
pathlib.Path("results/toy/metrics.json").write_text(json.dumps({"seed": seed}))
pathlib.Path("imported.txt").write_text(pipeline.__file__)
if seed == 23:  # a stage that reports as it goes
    print("epoch 1 done", flush=True)
    time.sleep(3)
    print("epoch 2 done", flush=True)
if seed == 13:
    raise SystemExit(2)
if seed == 19:  # killed (preempted, OOM) unless the orchestrator asks it to resume
    import signal
    if os.environ.get("TLOPS_RESUME") != "1":
        os.kill(os.getpid(), signal.SIGKILL)
    pathlib.Path("data/toy/value.txt").write_text("resumed")
"""


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def toy_project(project: Path, tmp_path: Path) -> Path:
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": TOY_STAGE}}))
    (project / "toy.py").write_text(TOY_SCRIPT)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url",
                    str(tmp_path / "remote")], cwd=project, check=True)
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "toy pipeline")
    return project


def test_run_names_are_ref_safe():
    name = run_name("weird name/with:chars")
    assert " " not in name and "/" not in name and ":" not in name
    subprocess.run(["git", "check-ref-format", "--branch", f"runs/{name}"], check=True, capture_output=True)


@pytest.mark.slow
def test_run_versions_and_reruns_skip(toy_project: Path, tmp_path: Path):
    first = RunWorkspace.create(toy_project, "r1", overrides={"common.seed": 3})
    assert first.repro("toy").status == "ran"
    assert (first.path / "data/toy/value.txt").read_text() == "21"
    # the stage ran the code of the run's own checkout, not the editable install's main checkout
    assert Path((first.path / "imported.txt").read_text()).is_relative_to(first.path)
    first.commit("run r1")
    first.push()
    assert "run-r1" in _git(toy_project, "tag").split()
    assert yaml.safe_load(_git(toy_project, "show", "run-r1:params.yaml"))["common"]["seed"] == 3

    # same params again: DVC finds the stage up to date (from the last run's lock and the shared cache)
    again = RunWorkspace.create(toy_project, "r2", overrides={"common.seed": 3})
    assert again.repro("toy").status == "skipped"
    assert (again.path / "data/toy/value.txt").read_text() == "21"

    # other params: the stage runs; the main checkout's params.yaml is untouched
    other = RunWorkspace.create(toy_project, "r3", overrides={"common.seed": 4})
    assert other.repro("toy").status == "ran"
    assert yaml.safe_load((toy_project / "params.yaml").read_text())["common"]["seed"] == 0

    # a fresh clone at the tag + dvc pull gives r1's exact outputs, and nothing left to re-run
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--branch", "run-r1", str(toy_project), str(clone)], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url",
                    str(tmp_path / "remote")], cwd=clone, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "pull", "-q"], cwd=clone, check=True)
    assert (clone / "data/toy/value.txt").read_text() == "21"
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=clone, check=True, capture_output=True,
                            text=True).stdout
    assert "up to date" in status


DOUBLE_STAGE = {"cmd": f"{sys.executable} -P double.py", "deps": ["double.py", "data/toy"], "outs": ["data/double"]}
DOUBLE_SCRIPT = """
import pathlib
pathlib.Path("data/double").mkdir(parents=True, exist_ok=True)
pathlib.Path("data/double/value.txt").write_text(str(2 * int(pathlib.Path("data/toy/value.txt").read_text())))
"""


@pytest.mark.slow
def test_a_chain_run_in_order_checks_each_stage_alone_and_still_reruns_what_changed(toy_project: Path):
    """`upstream_done` (the retrain flow's chain, run in dvc.yaml's order): DVC checks the stage alone. Asked
    alone with its upstream out of date it does not run that upstream; run in order, a stage whose input the
    stage before it changed still runs."""
    (toy_project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": TOY_STAGE, "double": DOUBLE_STAGE}}))
    (toy_project / "double.py").write_text(DOUBLE_SCRIPT)
    _git(toy_project, "add", "-A")
    _git(toy_project, "commit", "-q", "-m", "a chain of two")
    run = RunWorkspace.create(toy_project, "chain", overrides={"common.seed": 4})
    assert [run.repro(stage, upstream_done=True).status for stage in ("toy", "double")] == ["ran", "ran"]
    assert (run.path / "data/double/value.txt").read_text() == "56"
    _set_seed(run.path, 5)
    assert run.repro("double", upstream_done=True).status == "skipped"  # alone: toy's new seed is not looked at
    assert (run.path / "data/toy/value.txt").read_text() == "28"
    # in order, as the flow runs them: toy's new output is double's changed input
    assert [run.repro(stage, upstream_done=True).status for stage in ("toy", "double")] == ["ran", "ran"]
    assert (run.path / "data/double/value.txt").read_text() == "70"
    release_run(toy_project, "chain")


def _set_seed(worktree: Path, seed: int) -> None:
    params = yaml.safe_load((worktree / "params.yaml").read_text())
    params["common"]["seed"] = seed
    (worktree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_a_run_shares_the_projects_cache_and_local_remotes_and_skips_a_remote_its_commit_lacks(toy_project: Path,
                                                                                               tmp_path: Path):
    """The worktree's .dvc/config.local: the project's own cache folder (a relative one resolved against the
    project, not the worktree), the project's local remote targets, and nothing for a remote added after the
    commit the run starts from."""
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "cache", "dir", "--local", "../../shared-cache"], cwd=toy_project, check=True)
    base = _git(toy_project, "rev-parse", "HEAD").strip()
    subprocess.run([*dvc, "remote", "add", "later", str(tmp_path / "later")], cwd=toy_project, check=True)
    _git(toy_project, "commit", "-qam", "a remote added after the run's base")
    workspace = RunWorkspace.create(toy_project, "shared", base=base)
    from dvc.config import Config

    local = Config(dvc_dir=str(workspace.path / ".dvc")).load_one("local")
    assert Path(local["cache"]["dir"]) == (toy_project.parent.parent / "shared-cache").resolve()
    assert Path(local["remote"]["local"]["url"]) == tmp_path / "remote"
    assert "later" not in local["remote"]
    release_run(toy_project, "shared")


def test_bad_overrides_fail_before_any_git_work(toy_project: Path):
    with pytest.raises(ConfigError, match="common.seed = -1"):
        RunWorkspace.create(toy_project, "bad", overrides={"common.seed": -1})
    assert "runs/bad" not in _git(toy_project, "branch", "--list")
    assert not (toy_project / "runs" / "bad").exists()


@pytest.mark.slow
def test_failed_stage_is_not_retryable_and_names_the_exit(toy_project: Path):
    workspace = RunWorkspace.create(toy_project, "fails", overrides={"common.seed": 13})
    with pytest.raises(StageFailed, match=r"stage toy failed \(exit 2\)"):
        workspace.repro("toy")


# DVC runs a stage through $SHELL: bash execs the command (DVC sees -9), dash forks it and exits 137
@pytest.mark.slow
@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
def test_a_killed_stage_is_transient_and_its_retry_is_asked_to_resume(toy_project: Path, shell: str,
                                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SHELL", shell)
    workspace = RunWorkspace.create(toy_project, "killed", overrides={"common.seed": 19})
    with pytest.raises(TransientError, match=r"stage toy was killed by SIGKILL; a retry resumes it in"):
        workspace.repro("toy")
    assert workspace.repro("toy", resume=True).status == "ran"
    assert (workspace.path / "data/toy/value.txt").read_text() == "resumed"


@pytest.mark.slow
def test_a_hung_stage_is_stopped_at_its_limit_with_everything_it_started(toy_project: Path):
    workspace = RunWorkspace.create(toy_project, "hangs", overrides={"common.seed": 17,
                                                                     "orchestrate.stage_timeouts": {"toy": 3}})
    started = time.monotonic()
    with pytest.raises(StageFailed, match=r"stage toy timed out: .* ran past 3 s \(orchestrate.stage_timeouts.toy\)"):
        workspace.repro("toy")
    assert time.monotonic() - started < 60
    pid = int((workspace.path / "stage.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)  # the stage dvc launched was stopped too, not only dvc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").is_file() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_duplicate_run_name_is_refused(toy_project: Path):
    RunWorkspace.create(toy_project, "dup")
    with pytest.raises(FileExistsError, match="a run named 'dup' already exists"):
        RunWorkspace.create(toy_project, "dup")


@pytest.mark.slow
def test_stage_output_reaches_the_caller_while_the_stage_runs(toy_project: Path):
    workspace = RunWorkspace.create(toy_project, "talks", overrides={"common.seed": 23})
    heard: list[tuple[float, str]] = []
    workspace.repro("toy", on_line=lambda line: heard.append((time.monotonic(), line)))
    ended = time.monotonic()
    first = next(at for at, line in heard if line == "epoch 1 done")
    assert ended - first > 2  # heard while the stage still had its 3 s sleep ahead
    assert [line for _, line in heard if line.startswith("epoch")] == ["epoch 1 done", "epoch 2 done"]


@pytest.mark.slow
def test_retention_removes_old_finished_worktrees_and_keeps_their_tags(toy_project: Path, monkeypatch):
    for day, name in enumerate(["old1", "old2", "new1", "new2"], start=1):
        monkeypatch.setenv("GIT_COMMITTER_DATE", f"2026-11-0{day}T12:00:00")  # tag order without sleeping
        workspace = RunWorkspace.create(toy_project, name, overrides={"common.seed": day})
        workspace.repro("toy")
        workspace.commit(f"run {name}")
        release_run(toy_project, name)  # the run is over
    unfinished = RunWorkspace.create(toy_project, "in-progress")  # held by this process: running

    assert prune_runs(toy_project, keep=2) == ["old2", "old1"]
    runs = toy_project / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["in-progress", "new1", "new2"]
    assert unfinished.path.is_dir()
    tags = _git(toy_project, "tag", "--list", "run-*").split()
    assert {"run-old1", "run-old2", "run-new1", "run-new2"} <= set(tags)
    assert "data/toy" in _git(toy_project, "show", "run-old1:dvc.lock")  # the removed run is still restorable
    assert "runs/old1" not in _git(toy_project, "branch", "--list")
    assert prune_runs(toy_project, keep=2) == []


@pytest.mark.slow
def test_runs_dir_from_params_is_where_worktrees_go(toy_project: Path, tmp_path: Path):
    params = yaml.safe_load((toy_project / "params.yaml").read_text())
    params["orchestrate"]["runs_dir"] = str(tmp_path / "elsewhere")
    (toy_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(toy_project, "commit", "-qam", "runs elsewhere")
    workspace = RunWorkspace.create(toy_project, "away")
    assert workspace.path == tmp_path / "elsewhere" / "away"
    assert RunWorkspace.open(toy_project, "away").repro("toy").status == "ran"
    assert not (toy_project / "runs").exists()


def _epoch(day: int) -> float:
    return datetime(2026, 11, day, 12, tzinfo=timezone.utc).timestamp()


def _made_on(workspace: RunWorkspace, day: int) -> None:
    """Date the worktree's making (its .git file) to 2026-11-<day>, as if it had been made then."""
    os.utime(workspace.path / ".git", (_epoch(day), _epoch(day)))


@pytest.mark.slow
def test_failed_and_abandoned_runs_count_with_finished_ones_but_a_run_in_progress_never_goes(toy_project: Path,
                                                                                              monkeypatch, tmp_path):
    def finished(name: str, day: int) -> None:
        monkeypatch.setenv("GIT_COMMITTER_DATE", f"2026-11-{day:02d}T12:00:00+0000")
        workspace = RunWorkspace.create(toy_project, name)
        workspace.repro("toy")
        workspace.commit(f"run {name}")
        release_run(toy_project, name)

    def failed(name: str, day: int) -> None:
        workspace = RunWorkspace.create(toy_project, name, overrides={"common.seed": 13})
        with pytest.raises(StageFailed):
            workspace.repro("toy")
        release_run(toy_project, name)
        _made_on(workspace, day)

    finished("done-1", 1)
    failed("failed-2", 2)
    finished("done-4", 4)
    failed("failed-6", 6)
    # a run whose process was killed outright holds nothing any more: abandoned
    code = ("import sys, time; from pathlib import Path; from pipeline.runs.workspace import RunWorkspace; "
            "RunWorkspace.create(Path(sys.argv[1]), sys.argv[2]); print('made', flush=True); time.sleep(300)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(toy_project), "abandoned-5"], stdout=subprocess.PIPE,
                              text=True)
    assert killed.stdout.readline().strip() == "made"
    killed.kill()
    killed.wait()
    _made_on(RunWorkspace.open(toy_project, "abandoned-5"), 5)
    # runs in progress, the oldest of all: one held by another live process, one by this process
    elsewhere = subprocess.Popen([sys.executable, "-c", code, str(toy_project), "running-elsewhere"],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert elsewhere.stdout.readline().strip() == "made"
        _made_on(RunWorkspace.open(toy_project, "running-elsewhere"), 1)
        _made_on(RunWorkspace.create(toy_project, "running-here"), 1)

        assert prune_runs(toy_project, keep=3) == ["failed-2", "done-1"]
        runs = sorted(p.name for p in (toy_project / "runs").iterdir())
        assert runs == ["abandoned-5", "done-4", "failed-6", "running-elsewhere", "running-here"]
        assert "runs/failed-2" not in _git(toy_project, "branch", "--list")
        assert "run-done-1" in _git(toy_project, "tag").split()  # a finished run stays restorable
        with pytest.raises(FileExistsError, match="is in progress in another process"):
            RunWorkspace.create(toy_project, "running-elsewhere", runs_dir=str(tmp_path / "other-runs"))

        assert prune_runs(toy_project, keep=1) == ["abandoned-5", "done-4"]  # newest first
    finally:
        elsewhere.kill()
        elsewhere.wait()
    release_run(toy_project, "running-here")
    _made_on(RunWorkspace.open(toy_project, "running-here"), 3)
    # both are over now (the other process was killed): they count by age like the rest
    assert prune_runs(toy_project, keep=1) == ["running-here", "running-elsewhere"]
    assert sorted(p.name for p in (toy_project / "runs").iterdir()) == ["failed-6"]


def test_push_waits_double_up_to_their_cap_and_stay_within_the_command_limit():
    limits = OrchestrateParams(push_retries=20, push_backoff_s=2, push_backoff_max_s=60, command_timeout_s=1800)
    assert push_waits(limits) == [2, 4, 8, 16, 32] + [60] * 15  # uncapped, the last would be 2 * 2**19 s: 12 days
    short = OrchestrateParams(push_retries=20, push_backoff_s=2, push_backoff_max_s=60, command_timeout_s=200)
    assert push_waits(short) == [2, 4, 8, 16, 32, 60, 60]  # 182 s; one more would pass 200
    assert push_waits(OrchestrateParams(push_retries=0)) == []


@pytest.mark.slow
def test_a_failing_push_waits_the_capped_backoff_between_attempts(toy_project: Path):
    """A remote that refuses every upload (a folder under a plain file): each wait is what push_waits says."""
    blocker = toy_project.parent / "not-a-folder"
    blocker.write_text("a file where the remote's parent folder should be")
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url",
                    str(blocker / "remote")], cwd=toy_project, check=True)
    workspace = RunWorkspace.create(toy_project, "unpushable", overrides={
        "orchestrate.push_retries": 5, "orchestrate.push_backoff_s": 0.1, "orchestrate.push_backoff_max_s": 0.2,
        "orchestrate.command_timeout_s": 120})
    workspace.repro("toy")
    heard = _Heard()
    logger = logging.getLogger("tlops.runs.workspace")
    logger.addHandler(heard)
    try:
        with pytest.raises(TransientError, match=r"failed 6 times; last error: "):
            workspace.push()
    finally:
        logger.removeHandler(heard)
    waits = [float(re.search(r"again in ([\d.]+) s", line).group(1)) for line in heard.lines]
    assert waits == [0.1, 0.2, 0.2, 0.2, 0.2]


class _Heard(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
