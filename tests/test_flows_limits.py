"""The retrain flow's own limits, for real in Prefect's test harness: a run past `orchestrate.flow_timeout_s`
is stopped with its stage's processes and its failure names the param; a run that cannot get the training
slot within `orchestrate.slot_timeout_s` fails naming the limit; a failed run prunes the old failed worktrees.

The project's chain is one `ingest` stage that hangs (as a stuck training would), writing its pid first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from pipeline.runs.workspace import RunWorkspace, release_run
from tests.conftest import copy_project
from tests.support.prefect_db import harness_on_copy

pytestmark = pytest.mark.slow
HANG = "import os, pathlib, time; pathlib.Path('stage.pid').write_text(str(os.getpid())); time.sleep(300)"
FLOW_TIMEOUT_S = 25  # past the worktree's making (a few seconds, more on a busy machine), while the stage hangs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def flows(tmp_path_factory, prefect_db):
    work = tmp_path_factory.mktemp("flow-limits")
    project = copy_project(work / "project")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": {"cmd": f'{sys.executable} -c "{HANG}"'}}}))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["orchestrate"].update(flow_timeout_s=FLOW_TIMEOUT_S, slot_timeout_s=3, keep_runs=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url", str(work / "remote")],
                   cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "a hanging stage"],
                   cwd=project, check=True)
    cwd = os.getcwd()
    try:
        os.chdir(project)
        with harness_on_copy(prefect_db):
            from flows.parameters import RetrainParameters
            from flows.retrain import retrain

            yield {"project": project, "retrain": lambda: retrain(RetrainParameters(), reason="limits",
                                                                  return_state=True)}
    finally:
        os.chdir(cwd)


def test_a_run_past_its_time_limit_is_stopped_with_its_stage_and_prunes_old_failed_runs(flows):
    project = flows["project"]
    for day, name in ((1, "failed-long-ago"), (2, "failed-a-while-ago")):  # failed runs, over, made in November
        workspace = RunWorkspace.create(project, name)
        release_run(project, name)
        made = datetime(2026, 11, day, tzinfo=timezone.utc).timestamp()
        os.utime(workspace.path / ".git", (made, made))

    state = flows["retrain"]()

    assert state.name == "TimedOut", state
    assert f"ran past {FLOW_TIMEOUT_S} s (orchestrate.flow_timeout_s)" in state.message, state.message
    (worktree,) = [p for p in (project / "runs").iterdir()]  # keep_runs 1: the on_failure hook pruned the others
    assert worktree.name not in ("failed-long-ago", "failed-a-while-ago")
    pid = int((worktree / "stage.pid").read_text())  # the stage did start: the limit caught it running
    assert not _alive(pid), "the stage outlived the flow's time limit"


def test_a_run_that_cannot_get_the_slot_fails_naming_the_limit(flows):
    from prefect.concurrency.sync import concurrency

    from flows.engine import ensure_concurrency_limit

    ensure_concurrency_limit("tlops-retrain")
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:  # another run holding the slot all along
        with concurrency("tlops-retrain", occupy=1, strict=True):
            holding.set()
            done.wait(120)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(60), "the slot was never taken by the holder"
        before = sorted(p.name for p in (flows["project"] / "runs").iterdir())
        state = flows["retrain"]()
    finally:
        done.set()
        holder.join(60)
    assert state.is_failed(), state
    assert ("waited 3 s (orchestrate.slot_timeout_s) for the 'tlops-retrain' slot (orchestrate.concurrency_limit)"
            in state.message), state.message
    assert sorted(p.name for p in (flows["project"] / "runs").iterdir()) == before  # no worktree: it never started
