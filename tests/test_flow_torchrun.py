"""The retrain flow with `finetune.nproc_per_node: 2` from the form: the fine-tune stage runs under torchrun.

The flow runs in-process (prefect_test_harness) on the tiny project, its dvc.yaml cut to the stages the
fine-tune needs (ingest, validate, select, freeze, finetune: the flow runs the chain dvc.yaml declares).
The dvc.yaml command is unchanged (`tlops finetune ...`): the stage itself starts the two ranks. A
watcher records the processes that run `pipeline.cli finetune` with a RANK in their environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from pipeline.training.ddp import NPROC_ENV
from tests.conftest import copy_project
from tests.support.tiny import make_tiny_project

pytestmark = pytest.mark.slow
UP_TO_FINETUNE = ("ingest", "validate", "select", "freeze", "finetune")


def _watch_ranks(seen: dict[int, dict], stop: threading.Event) -> None:
    """Record each process running `-m pipeline.cli finetune` under torchrun: its rank, world size, parents."""
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["pid"] in seen or "pipeline.cli" not in cmdline or "finetune" not in cmdline:
                continue
            try:
                env = proc.environ()
                agent = proc.parent()
                launcher = agent.parent() if agent else None
                seen[proc.info["pid"]] = {"rank": env.get("RANK"), "world": env.get("WORLD_SIZE"),
                                          "agent": agent.cmdline() if agent else [],
                                          "launcher": launcher.cmdline() if launcher else []}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("flow-torchrun")
    project = copy_project(work / "project")
    graph = yaml.safe_load((project / "dvc.yaml").read_text())
    graph["stages"] = {name: stage for name, stage in graph["stages"].items() if name in UP_TO_FINETUNE}
    (project / "dvc.yaml").write_text(yaml.safe_dump(graph, sort_keys=False))
    make_tiny_project(project, work / "remote")  # commits the cut dvc.yaml with the tiny params
    saved, cwd = os.environ.pop(NPROC_ENV, None), os.getcwd()
    seen: dict[int, dict] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_ranks, args=(seen, stop), daemon=True)
    try:
        os.chdir(project)
        with prefect_test_harness():
            from prefect import get_client

            from flows.parameters import RetrainParameters
            from flows.retrain import retrain

            watcher.start()
            state = retrain(RetrainParameters(extra={"finetune.nproc_per_node": 2}), reason="torchrun",
                            return_state=True)
            stop.set()
            with get_client(sync_client=True) as api:
                logs = "\n".join(log.message for log in api.read_logs())
            yield {"state": state, "result": state.result(raise_on_failure=False), "logs": logs, "seen": seen,
                   "project": project}
    finally:
        stop.set()
        os.chdir(cwd)
        if saved is not None:
            os.environ[NPROC_ENV] = saved


def test_the_flow_completes_with_a_two_process_fine_tune(torchrun_run):
    assert torchrun_run["state"].is_completed(), torchrun_run["state"]
    result = torchrun_run["result"]
    assert [(s["stage"], s["status"]) for s in result["stages"]] == [(name, "ran") for name in UP_TO_FINETUNE]
    workspace = Path(result["workspace"])
    metrics = json.loads((workspace / "results/finetune/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] >= 1
    assert (workspace / "models/finetuned/model.pt").is_file()
    committed = subprocess.run(["git", "show", f"run-{result['run']}:params.yaml"], cwd=torchrun_run["project"],
                               capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(committed)["finetune"]["nproc_per_node"] == 2  # the run's version records it
    assert "launched under torchrun with 2 processes" in torchrun_run["logs"]  # the stage's line, in the run log


def test_the_ranks_ran_under_the_stages_own_torchrun(torchrun_run):
    ranks = [p for p in torchrun_run["seen"].values() if p["rank"] is not None]
    assert sorted(p["rank"] for p in ranks) == ["0", "1"], torchrun_run["seen"]
    for proc in ranks:
        assert proc["world"] == "2"
        assert proc["agent"][1:3] == ["-m", "pipeline.training.ddp"], proc  # torchrun's agent...
        assert "--nproc_per_node" in proc["agent"] and "2" in proc["agent"]
        launcher = proc["launcher"]  # ...started by `tlops finetune`
        assert any(part.endswith("tlops") for part in launcher[:2]) and "finetune" in launcher, launcher
