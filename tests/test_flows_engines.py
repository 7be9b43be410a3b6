"""Unattended retraining on real parts: a Prefect server on PostgreSQL, deployments registered on a
process work pool (`python -m flows.deploy --register`, what `make deploy` runs) and a worker on it
(`--worker`, what `make worker` runs); no `serve` in the foreground.

Runs are started over the API as the dashboard does. One pair of runs (the scheduled and the on-demand
deployment, started together) shows: the worker picks both up, the shared concurrency limit makes them
train one after the other, stage output reaches the run log while the stage runs, and the report links
are http URLs that a browser opens (served by the reports web server), and the fine-tune runs under
torchrun with 2 processes (`finetune.nproc_per_node: 2`, gloo on the CPU) from the flow. The project's
chain is cut after the fine-tune (ingest, validate, select, freeze, finetune): these tests are about the
engine, and the whole chain runs through Prefect in tests/test_flows_e2e.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime

import httpx
import pytest

from flows.server import PrefectServer, ReportServer
from pipeline.config import load_params
from pipeline.runs.publish import URL_ENV
from tests.conftest import copy_project
from tests.support.flowruns import artifacts, finish, prefect_api, start, stop_service, wait_for
from tests.support.postgres import PostgresServer, postgres_bin
from tests.support.tiny import cut_chain, make_tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.skipif(postgres_bin() is None, reason=(
    "PostgreSQL server binaries not installed (.ci/run installs Debian's postgresql package)"))]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """PostgreSQL, a Prefect server on it, the deployments registered on the pool, a process worker."""
    work = tmp_path_factory.mktemp("engine")
    project = make_tiny_project(copy_project(work / "project"), work / "dvc-remote")
    cut_chain(project, finetune={"nproc_per_node": 2})  # the fine-tune as 2 torchrun ranks
    with PostgresServer() as postgres, PrefectServer(work / "prefect", database_url=postgres.url) as server, \
            ReportServer(project / "runs") as reports:
        env = {**server.env(), URL_ENV: reports.url, "PREFECT_WORKER_QUERY_SECONDS": "2"}
        registered = subprocess.run([sys.executable, "-m", "flows.deploy", "--register"], cwd=project, env=env,
                                    capture_output=True, text=True, timeout=300)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        log = open(work / "worker.log", "wb")  # noqa: SIM115 (the worker process's log)
        worker = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--worker"], cwd=project, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        api = prefect_api(server.api_url)
        try:
            yield {"project": project, "api": api, "registered": registered.stdout, "work": work,
                   "postgres": postgres}
        finally:
            # every run is finished by now: a short grace (this worker outlived its SIGTERM in each suite run, 20 s)
            stop_service(worker, 5)
            api.close()


def test_registered_on_the_work_pool_with_schedules_and_one_shared_limit(engine):
    api, project = engine["api"], engine["project"]
    orchestrate = load_params(project / "params.yaml").orchestrate
    assert "created work pool 'tlops' (process)" in engine["registered"]
    pool = api.get(f"/work_pools/{orchestrate.work_pool}").raise_for_status().json()
    assert pool["type"] == "process"
    scheduled = api.get("/deployments/name/retrain/retrain-scheduled").raise_for_status().json()
    assert scheduled["work_pool_name"] == orchestrate.work_pool
    assert scheduled["entrypoint"] == "flows.retrain.retrain"
    assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == [orchestrate.retrain_cron]
    drift = api.get("/deployments/name/drift-check/drift-check").raise_for_status().json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == [orchestrate.drift_cron]
    limit = api.get(f"/v2/concurrency_limits/{orchestrate.concurrency_limit}").raise_for_status().json()
    assert limit["limit"] == 1 and limit["active"]
    # the server really is on PostgreSQL: its tables are there
    tables = subprocess.run([str(engine["postgres"].bin / "psql"), "-h", "127.0.0.1", "-p",
                             str(engine["postgres"].port), "-U", "tlops", "-d", "prefect", "-Atc",
                             "select count(*) from deployment"], capture_output=True, text=True)
    assert tables.returncode == 0 and int(tables.stdout) == 3, tables.stderr


def _logs(api: httpx.Client, run_id: str) -> list[str]:
    rows = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                          "sort": "TIMESTAMP_ASC"}).raise_for_status().json()
    return [row["message"] for row in rows]


def _trained_between(api: httpx.Client, run_id: str) -> tuple[datetime, datetime]:
    """First start and last end of the run's tasks that hold the training slot.

    Publishing the reports comes after the slot is released, so it may overlap the next run's first task.
    """
    tasks = api.post("/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [run_id]}}}).json()
    stages = [t for t in tasks if t["start_time"] and t["end_time"] and not t["name"].startswith("publish-reports")]
    return (min(datetime.fromisoformat(t["start_time"]) for t in stages),
            max(datetime.fromisoformat(t["end_time"]) for t in stages))


def test_scheduled_and_on_demand_runs_take_turns_with_live_logs_and_http_links(engine):
    api = engine["api"]
    scheduled = start(api, "retrain", "retrain-scheduled", {"reason": "scheduled (started from the test)"})
    on_demand = start(api, "retrain", "retrain-on-demand", {"reason": "on demand"})

    # live logs: a fine-tune epoch line is in the run log while that run is still running
    seen_live: dict[str, bool] = {}

    def epoch_line_while_running() -> bool:
        for run_id in (scheduled, on_demand):
            running = api.get(f"/flow_runs/{run_id}").json()["state"]["type"] == "RUNNING"
            if running and any(m.startswith("finetune | ") and " epoch " in m for m in _logs(api, run_id)):
                seen_live[run_id] = True
        return bool(seen_live)

    wait_for(epoch_line_while_running, 900, f"no fine-tune epoch line reached a running flow's log; see "
                                            f"{engine['work'] / 'worker.log'}")
    runs = [finish(api, run_id) for run_id in (scheduled, on_demand)]
    assert {r["deployment_id"] for r in runs} == {
        api.get(f"/deployments/name/retrain/{name}").json()["id"]
        for name in ("retrain-scheduled", "retrain-on-demand")}

    # one after the other: the training intervals of the two runs do not overlap
    (a_start, a_end), (b_start, b_end) = sorted(_trained_between(api, r["id"]) for r in runs)
    assert a_end <= b_start, f"runs overlapped: {a_start}..{a_end} and {b_start}..{b_end}"
    waited = [m for r in runs for m in _logs(api, r["id"]) if "waits for the 'tlops-retrain' slot" in m]
    assert len(waited) == 2

    # the run that trained fine-tuned with two torchrun ranks; the other started from its state
    launched = [m for r in runs for m in _logs(api, r["id"]) if "launched under torchrun with 2 processes" in m]
    assert len(launched) == 1, launched
    worktrees = sorted((engine["project"] / "runs").iterdir())
    assert len(worktrees) == 2
    for worktree in worktrees:
        assert json.loads((worktree / "results/finetune/metrics.json").read_text())["world_size"] == 2

    for run in runs:
        found = artifacts(api, run["id"])
        # a link artifact is markdown "[label](url)" without a key
        links = [re.search(r"\]\((.+)\)$", a["data"]).group(1) for a in found if a["key"] is None]
        assert links and all(link.startswith("http://127.0.0.1:") for link in links), links
        for link in links:
            page = httpx.get(link, timeout=30)
            assert page.status_code == 200 and "<html" in page.text.lower()[:2000], link
        table = next(a for a in found if a["key"] == "retrain-metrics")
        rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
        assert ("finetune", "test_accuracy") in {(row["stage"], row["metric"]) for row in rows}
