"""A retrain cancelled through the Prefect API while it fine-tunes: within seconds no process of the run
remains (checked by pid), and a second run started right after never overlaps a training process of the
first.

For real: a Prefect server (SQLite) on loopback, the deployments served (`python -m flows.deploy`, what
`make ui` serves), runs started and cancelled over the API as the dashboard does. The project is the tiny
one cut after the fine-tune, whose fine-tune is made long enough to be caught mid-epoch. A watcher scans
/proc all along and records, for each run's worktree, which processes work in it (cwd or command line
under it) and which of those train; the verdicts come from those samples.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from flows.server import PrefectServer
from pipeline.common.run_names import run_name
from tests.conftest import copy_project
from tests.support.flowruns import prefect_api, start, stop_service, wait_for
from tests.support.prefect_db import seed_home
from tests.support.tiny import cut_chain, make_tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GONE_WITHIN_S = 60  # a deadline to poll against, not a speed requirement (the stage's grace is 10 s)


@dataclass
class Sample:
    at: float
    working: dict[str, set[int]] = field(default_factory=dict)  # run -> pids working in its worktree
    training: dict[str, set[int]] = field(default_factory=dict)  # run -> pids of its training stage


def _trains(argv: list[str]) -> bool:
    """`tlops finetune ...`, or a torchrun rank of it (`python -m pipeline.cli finetune ...`); not `dvc repro
    finetune`, its shell or its guard."""
    return "finetune" in argv and any(part.endswith("tlops") or part == "pipeline.cli" for part in argv[:3])


def _scan(runs: Path) -> Sample:
    """Every process whose cwd or command line lies under a run's worktree, by run (its flow run's name);
    the fine-tune's own processes as training."""
    sample = Sample(time.monotonic())
    prefix = str(runs) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if "zombie" in Path(f"/proc/{entry}/status").read_text():
                continue
        except OSError:  # ended meanwhile, or not ours to read
            continue
        for text in (cwd + os.sep, " ".join(argv)):
            if prefix not in text:
                continue
            folder = text.split(prefix, 1)[1].split(os.sep, 1)[0].split(" ", 1)[0]
            if folder.count("-") < 2:  # the runs folder itself, or no run's worktree
                continue
            run = folder.split("-", 2)[2]  # without run_name's timestamp
            sample.working.setdefault(run, set()).add(int(entry))
            if _trains(argv):
                sample.training.setdefault(run, set()).add(int(entry))
            break
    return sample


class Watcher(threading.Thread):
    """Scans /proc every 0.1 s until stopped, keeping every sample."""

    def __init__(self, runs: Path):
        super().__init__(daemon=True)
        self.runs, self.samples, self.stop = runs, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(_scan(self.runs))
            time.sleep(0.1)

    def training(self) -> dict[str, set[int]]:
        return self.samples[-1].training if self.samples else {}


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_db):
    work = tmp_path_factory.mktemp("cancel")
    project = make_tiny_project(copy_project(work / "project"), work / "dvc-remote")
    # a fine-tune of many long epochs without early stopping: it is still training when cancelled
    cut_chain(project, freeze={"epochs": 200}, train={"min_epoch_steps": 20}, finetune={"patience": 0})
    with PrefectServer(seed_home(work / "prefect", prefect_db)) as server:
        env = {**server.env(), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
        log = open(work / "serve.log", "wb")  # noqa: SIM115 (the serving process's log)
        serve = subprocess.Popen([sys.executable, "-m", "flows.deploy"], cwd=project, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        api = prefect_api(server.api_url)
        watcher = Watcher(project / "runs")
        watcher.start()
        try:
            # every deployment the test starts (they are registered one after another)
            wait_for(lambda: all(api.get(f"/deployments/name/retrain/{name}").status_code == 200
                                 for name in ("retrain-on-demand", "retrain-scheduled")), 120,
                     f"the deployments were never served; see {work / 'serve.log'}")
            yield {"api": api, "project": project, "watcher": watcher, "log": work / "serve.log"}
        finally:
            watcher.stop.set()
            stop_service(serve, 60)
            api.close()


def _cancel(api: httpx.Client, run_id: str) -> None:
    """What the dashboard's Cancel does: set the flow run's state to Cancelling."""
    api.post(f"/flow_runs/{run_id}/set_state",
             json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}).raise_for_status()


def _epoch_logged(api: httpx.Client, run_id: str) -> bool:
    """The fine-tune has reported a finished epoch in the run's log: it is training, past its start-up."""
    rows = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                          "sort": "TIMESTAMP_DESC"}).raise_for_status().json()
    return any(row["message"].startswith("finetune | ") and " epoch " in row["message"] for row in rows)


def _state(api: httpx.Client, run_id: str) -> str:
    return api.get(f"/flow_runs/{run_id}").json()["state"]["type"]


def _run_of(api: httpx.Client, run_id: str) -> str:
    """The flow run's worktree name without its timestamp (pipeline/common/run_names.py: run_name)."""
    return run_name(api.get(f"/flow_runs/{run_id}").json()["name"]).split("-", 2)[2]


def test_a_cancelled_fine_tune_leaves_no_process_and_the_next_run_never_overlaps_it(served):
    api, watcher = served["api"], served["watcher"]
    first = start(api, "retrain", "retrain-on-demand", {"reason": "to be cancelled"})
    run1 = _run_of(api, first)
    wait_for(lambda: (run1 in watcher.training() and _epoch_logged(api, first))
             or _state(api, first) in {"FAILED", "CRASHED", "COMPLETED"}, 600,
             f"run {run1} never reached a fine-tune epoch; see {served['log']}")
    assert _state(api, first) == "RUNNING", f"run {run1} ended before its fine-tune: {_state(api, first)}"
    assert run1 in watcher.training(), f"run {run1}'s fine-tune ended before the cancel"

    _cancel(api, first)
    cancelled_at = time.monotonic()
    # a second run right away, on the other deployment: only the shared training slot keeps them apart
    second = start(api, "retrain", "retrain-scheduled", {"reason": "started right after the cancel"})
    run2 = _run_of(api, second)

    def run1_gone() -> bool:
        return (bool(watcher.samples) and watcher.samples[-1].at > cancelled_at
                and run1 not in watcher.samples[-1].working)

    wait_for(run1_gone, GONE_WITHIN_S, f"processes of the cancelled run {run1} were still running "
                                       f"{GONE_WITHIN_S} s after the cancel: {watcher.samples[-1].working.get(run1)}")
    gone_after = watcher.samples[-1].at - cancelled_at
    wait_for(lambda: _state(api, first) == "CANCELLED", 60, f"run {run1} never reached Cancelled: "
                                                            f"{_state(api, first)}")

    # the second run trains; it never did while anything of the first one ran
    wait_for(lambda: run2 in watcher.training() or _state(api, second) in {"FAILED", "CRASHED", "COMPLETED"}, 600,
             f"run {run2} never reached its fine-tune; see {served['log']}")
    assert run2 in watcher.training(), f"run {run2} ended before its fine-tune: {_state(api, second)}"
    _cancel(api, second)
    wait_for(lambda: run2 not in watcher.samples[-1].working, GONE_WITHIN_S,
             f"processes of the cancelled run {run2} were still running {GONE_WITHIN_S} s after the cancel")

    samples = list(watcher.samples)
    overlaps = [s.at for s in samples if s.working.get(run1) and s.training.get(run2)]
    assert not overlaps, f"run {run2} trained while processes of run {run1} still ran"
    trained1 = [pid for s in samples for pid in s.training.get(run1, ())]
    trained2 = [pid for s in samples for pid in s.training.get(run2, ())]
    assert trained1 and trained2 and not set(trained1) & set(trained2)
    for pid in set(trained1) | set(trained2):  # checked by pid: none of the training processes is left
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    print(f"run {run1}'s processes were gone {gone_after:.1f} s after its cancel")
