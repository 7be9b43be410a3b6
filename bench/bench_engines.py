"""Orchestration engines compared: what running the retrain flow through Prefect costs on each, and whether
four runs at once on the process work pool leave the project intact.

Part 1, in one run, on the same kind of tiny project (tests/support/tiny.py, chain cut after the fine-tune
tests/support/tiny.py cut_chain), each engine with its own project copy:
- A: a Prefect server on SQLite and the deployments served by `python -m flows.deploy` (the `make ui` path);
- B: a Prefect server on PostgreSQL, the deployments registered on the process work pool
  (`python -m flows.deploy --register`, `make deploy`) and a worker on it (`--worker`, `make worker`).
On each, retrain-on-demand runs once in full (it populates DVC), then three times with nothing changed
(every stage skipped: the time is almost all orchestration). Per run, from the API: trigger-to-start
latency (created -> start_time; also split into pick-up, created -> PENDING, and launch, PENDING -> RUNNING),
the flow's wall time (start_time -> end_time), the stages' own time (the `seconds` of the stage results)
and overhead = wall - stages. Medians per engine, and B/A ratios of the no-op wall and trigger latency.
Both engines poll for work every POLL_S seconds (PREFECT_RUNNER_POLL_FREQUENCY for `serve`,
PREFECT_WORKER_QUERY_SECONDS for the worker; Prefect's default is 10 for both).

Part 2, engine B on a fresh project: the global concurrency limit raised to 4 slots (and the on-demand
deployment's own limit, 1 with ENQUEUE, too), four retrain-on-demand runs started at once with distinct
seeds so each trains. Figures: the batch's wall time against the sum of the four runs' walls; checks
(ok/failed): every run completed, every run's git tag exists, `dvc status` up to date in each run worktree,
the run's outputs in sync with the DVC remote, every object in the DVC cache and remote hashes to its
name (DVC 3.67 has no fsck), and the four fine-tuned models load with torch.load(weights_only=True).

Never asserts times: figures and ratios measured in this run only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import httpx

from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[1]
POLL_S = "2"
DEPLOYMENT = ("retrain", "retrain-on-demand")
NOOP_RERUNS = 3
CONCURRENT = 4
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
_STAGE_LINE = re.compile(r"^stage (\S+): (ran|skipped|restored) in ([0-9.]+)s \(attempt (\d+)\)$")
_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"# [{time.perf_counter() - _T0:7.1f}s] {message}", flush=True)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _secs(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds(), 3) if a and b else None


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process group this bench started for ``proc``, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- projects and engines

def make_project(work: Path) -> Path:
    """A tiny project copy (own image folder and DVC remote) with the chain cut after the fine-tune."""
    from tests.conftest import copy_project
    from tests.support.tiny import cut_chain, make_tiny_project

    work.mkdir(parents=True, exist_ok=True)
    project = make_tiny_project(copy_project(work / "project"), work / "dvc-remote")
    cut_chain(project)
    return project


def _wait_deployment(api: httpx.Client, log: Path, proc: subprocess.Popen, timeout: float = 180) -> bool:
    """True once the on-demand deployment is there; False when ``proc`` (serve, worker) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get("/deployments/name/{}/{}".format(*DEPLOYMENT)).status_code == 200:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    raise TimeoutError(f"the deployments never appeared in {timeout:.0f}s; see {log}")


@contextmanager
def engine_sqlite(project: Path, work: Path) -> Iterator[httpx.Client]:
    """A: a Prefect server on SQLite and `python -m flows.deploy` serving the deployments from the project."""
    from flows.server import PrefectServer

    with PrefectServer(work / "prefect") as server:
        env = {**server.env(), "PREFECT_RUNNER_POLL_FREQUENCY": POLL_S}
        api = httpx.Client(base_url=server.api_url, timeout=60)
        log_path = work / "serve.log"
        with open(log_path, "wb") as log:
            serving = subprocess.Popen([sys.executable, "-m", "flows.deploy"], cwd=project, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not _wait_deployment(api, log_path, serving):
                raise RuntimeError(f"python -m flows.deploy exited {serving.returncode}; see {log_path}")
            progress(f"engine A up: SQLite server {server.api_url}, python -m flows.deploy in {project}")
            yield api
        finally:
            _stop(serving)
            api.close()


@contextmanager
def engine_postgres(project: Path, work: Path) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """B: PostgreSQL, a Prefect server on it, the deployments registered on the process pool, a worker."""
    from flows.server import PrefectServer
    from tests.support.postgres import PostgresServer

    with PostgresServer() as postgres, PrefectServer(work / "prefect", database_url=postgres.url) as server:
        env = {**server.env(), "PREFECT_WORKER_QUERY_SECONDS": POLL_S}
        registered = subprocess.run([sys.executable, "-m", "flows.deploy", "--register"], cwd=project, env=env,
                                    capture_output=True, text=True, timeout=300)
        if registered.returncode != 0:
            raise RuntimeError(f"flows.deploy --register failed:\n{registered.stdout}{registered.stderr}")
        log_path = work / "worker.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--worker"], cwd=project, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        api = httpx.Client(base_url=server.api_url, timeout=60)
        try:
            if not _wait_deployment(api, log_path, worker):
                raise RuntimeError(f"the worker exited {worker.returncode}; see {log_path}")
            progress(f"engine B up: PostgreSQL :{postgres.port}, server {server.api_url}, registered "
                     f"({len(registered.stdout.splitlines())} lines), worker pid {worker.pid}")
            yield api, env
        finally:
            _stop(worker)
            api.close()


# ---------------------------------------------------------------- runs over the API

def trigger(api: httpx.Client, parameters: dict) -> str:
    from tests.support.flowruns import start

    return start(api, *DEPLOYMENT, parameters)


def await_runs(api: httpx.Client, run_ids: list[str], timeout: float = 1800) -> dict[str, dict]:
    """Poll every 0.25 s until each run is in a terminal state; {id: (run, seconds from call to seen done)}."""
    started, seen, deadline = time.perf_counter(), {}, time.monotonic() + timeout
    while len(seen) < len(run_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow runs {sorted(set(run_ids) - set(seen))} not done in {timeout:.0f}s")
        for run_id in run_ids:
            if run_id not in seen:
                run = api.get(f"/flow_runs/{run_id}").raise_for_status().json()
                if run["state"]["type"] in TERMINAL:
                    seen[run_id] = {"run": run, "seen_done_s": round(time.perf_counter() - started, 3)}
        time.sleep(0.25)
    return seen


def _logs(api: httpx.Client, run_id: str) -> list[str]:
    messages, offset = [], 0
    while True:
        rows = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200,
                                              "offset": offset, "sort": "TIMESTAMP_ASC"}).raise_for_status().json()
        messages += [row["message"] for row in rows]
        if len(rows) < 200:
            return messages
        offset += 200


def _stages_from_result(run: dict) -> list[dict] | None:
    """The flow's returned stage results, when the API holds the result itself (not persisted by default)."""
    data = (run.get("state") or {}).get("data")
    if isinstance(data, dict) and isinstance(data.get("stages"), list):
        return data["stages"]
    return None


def run_figures(api: httpx.Client, run: dict) -> dict[str, Any]:
    """Timings of one finished flow run, from the API (run, its states, task runs and logs)."""
    run_id = run["id"]
    states = sorted(api.get("/flow_run_states/", params={"flow_run_id": run_id}).raise_for_status().json(),
                    key=lambda s: s["timestamp"])
    first: dict[str, datetime] = {}
    for state in states:
        first.setdefault(state["type"], _ts(state["timestamp"]))
    waited_for_slot = sum(1 for s in states if s.get("name") == "AwaitingConcurrencySlot")
    created, expected = _ts(run["created"]), _ts(run.get("expected_start_time"))
    start, end = _ts(run["start_time"]), _ts(run["end_time"])
    tasks = api.post("/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [run_id]}},
                                                "limit": 200}).raise_for_status().json()

    def total(prefix: str) -> float:
        return round(sum(t["total_run_time"] or 0 for t in tasks if t["task_key"].startswith(prefix)), 3)

    stage_tasks = [t for t in tasks if t["task_key"].startswith("run_stage")]
    stages = _stages_from_result(run)
    source = "flow result"
    if stages is None:  # the stage results' own seconds, as the task logged them ("stage X: ran in 1.2s ...")
        stages = [{"stage": m.group(1), "status": m.group(2), "seconds": float(m.group(3))}
                  for m in map(_STAGE_LINE.match, _logs(api, run_id)) if m]
        source = "stage log lines (result not persisted)"
    if not stages:  # last resort: the stage task runs' durations
        stages = [{"stage": t["name"], "status": "?", "seconds": t["total_run_time"] or 0} for t in stage_tasks]
        source = "stage task runs"
    wall = _secs(start, end)
    stages_s = round(sum(s["seconds"] for s in stages), 3)
    return {
        "flow_run": run["name"], "state": run["state"]["type"],
        "trigger_latency_s": _secs(created, start),
        "expected_to_start_s": _secs(expected, start),
        "pickup_s": _secs(created, first.get("PENDING")),
        "launch_s": _secs(first.get("PENDING"), first.get("RUNNING")),
        "wall_s": wall, "stages_s": stages_s,
        "overhead_s": round(wall - stages_s, 3) if wall is not None else None,
        "overhead_share": round((wall - stages_s) / wall, 3) if wall else None,
        "stage_tasks_s": total("run_stage"), "prepare_s": total("prepare"), "version_s": total("version"),
        "publish_s": total("publish"), "awaited_concurrency_slot": waited_for_slot,
        "ran": [s["stage"] for s in stages if s["status"] == "ran"],
        "skipped": [s["stage"] for s in stages if s["status"] == "skipped"],
        "stages_from": source,
        "_start": start, "_end": end, "_created": created,
        "_stage_intervals": [(_ts(t["start_time"]), _ts(t["end_time"])) for t in stage_tasks
                             if t["start_time"] and t["end_time"]],
    }


def _public(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


# ---------------------------------------------------------------- part 1: overhead per engine

def measure_engine(report: BenchReport, label: str, api: httpx.Client) -> list[dict]:
    rows = []
    for run in ["full"] + [f"noop{n}" for n in range(1, NOOP_RERUNS + 1)]:
        progress(f"engine {label}: {run} run started")
        t0 = time.perf_counter()
        run_id = trigger(api, {"reason": f"bench engines {label} {run}"})
        done = await_runs(api, [run_id])[run_id]
        figures = run_figures(api, done["run"])
        figures["client_trigger_to_seen_done_s"] = round(time.perf_counter() - t0, 3)
        figures["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other work on the machine skews the times
        rows.append({"run": run, **figures})
        report.emit(part="overhead", engine=label, run=run, **_public(figures))
        if figures["state"] != "COMPLETED":
            raise RuntimeError(f"engine {label}: {run} run ended {figures['state']}: {done['run']['state']}")
    noop = [r for r in rows if r["run"] != "full"]
    report.emit(part="overhead", engine=label, summary="medians of the no-op reruns",
                noop_runs=len(noop),
                noop_wall_s=_median([r["wall_s"] for r in noop]),
                noop_stages_s=_median([r["stages_s"] for r in noop]),
                noop_overhead_s=_median([r["overhead_s"] for r in noop]),
                noop_prepare_s=_median([r["prepare_s"] for r in noop]),
                noop_version_s=_median([r["version_s"] for r in noop]),
                noop_trigger_latency_s=_median([r["trigger_latency_s"] for r in noop]),
                noop_pickup_s=_median([r["pickup_s"] for r in noop]),
                noop_launch_s=_median([r["launch_s"] for r in noop]),
                all_trigger_latency_s=_median([r["trigger_latency_s"] for r in rows]),
                full_wall_s=rows[0]["wall_s"], full_stages_s=rows[0]["stages_s"],
                full_overhead_s=rows[0]["overhead_s"])
    return rows


def part_overhead(report: BenchReport, tmp: Path) -> dict[str, list[dict]]:
    results = {}
    for label, engine in (("A", "sqlite+serve"), ("B", "postgres+worker")):
        work = tmp / f"engine-{label}"
        progress(f"engine {label} ({engine}): making the tiny project")
        project = make_project(work)
        context = engine_sqlite(project, work) if label == "A" else engine_postgres(project, work)
        try:
            with context as handle:
                api = handle if label == "A" else handle[0]
                results[label] = measure_engine(report, label, api)
        except Exception as err:  # noqa: BLE001 - the other engine is still measured; main() reports the part failed
            progress(f"engine {label} failed: {type(err).__name__}: {err}")
            report.emit(part="overhead", engine=label, error=f"{type(err).__name__}: {err}"[-2000:])
            results[label] = []
    if not (results["A"] and results["B"]):
        raise RuntimeError(f"engine(s) {[k for k, v in results.items() if not v]} not measured")
    a = [r for r in results["A"] if r["run"] != "full"]
    b = [r for r in results["B"] if r["run"] != "full"]

    def ratio(key: str, rows_b: list, rows_a: list) -> float | None:
        mb, ma = _median([r[key] for r in rows_b]), _median([r[key] for r in rows_a])
        return round(mb / ma, 3) if mb is not None and ma else None

    report.emit(part="overhead", summary="B (postgres+worker) over A (sqlite+serve)", poll_s=float(POLL_S),
                noop_wall_B_over_A=ratio("wall_s", b, a),
                noop_overhead_B_over_A=ratio("overhead_s", b, a),
                noop_trigger_latency_B_over_A=ratio("trigger_latency_s", b, a),
                all_runs_trigger_latency_B_over_A=ratio("trigger_latency_s", results["B"], results["A"]),
                full_wall_B_over_A=ratio("wall_s", results["B"][:1], results["A"][:1]))
    return results


# ---------------------------------------------------------------- part 2: four at once

_RAISE_LIMIT = """
import sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
with get_client(sync_client=True) as client:
    client.update_global_concurrency_limit(sys.argv[1], GlobalConcurrencyLimitUpdate(limit=int(sys.argv[2])))
    print(client.read_global_concurrency_limit_by_name(sys.argv[1]).limit)
"""


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _md5_objects(root: Path) -> tuple[int, list[str]]:
    """Hash every object under a DVC cache/remote ``files/md5`` folder; (count, names that do not match)."""
    bad, count = [], 0
    for path in sorted((root / "files" / "md5").glob("*/*")):
        if not path.is_file() or path.name.endswith(".tmp") or ".tmp" in path.name:
            continue
        count += 1
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        expected = path.parent.name + path.name.removesuffix(".dir")
        if digest != expected:
            bad.append(str(path.relative_to(root)))
    return count, bad


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def part_concurrent(report: BenchReport, tmp: Path, reference: dict | None = None) -> None:
    """``reference``: engine B's full run of part 1 (one training run alone), for a sequential estimate."""
    from pipeline.config import load_params

    work = tmp / "concurrent"
    progress("concurrent: making a fresh tiny project")
    project = make_project(work)
    orchestrate = load_params(project / "params.yaml").orchestrate
    with engine_postgres(project, work) as (api, env):
        before = api.get(f"/v2/concurrency_limits/{orchestrate.concurrency_limit}").raise_for_status().json()
        raised = subprocess.run([sys.executable, "-c", _RAISE_LIMIT, orchestrate.concurrency_limit, str(CONCURRENT)],
                                env=env, capture_output=True, text=True, timeout=120)
        if raised.returncode != 0:  # the REST call the client makes, directly
            progress(f"client update_global_concurrency_limit failed ({raised.stderr.strip()[-300:]}); PATCH instead")
            api.patch(f"/v2/concurrency_limits/{orchestrate.concurrency_limit}",
                      json={"limit": CONCURRENT}).raise_for_status()
        after = api.get(f"/v2/concurrency_limits/{orchestrate.concurrency_limit}").raise_for_status().json()
        dep = api.get("/deployments/name/{}/{}".format(*DEPLOYMENT)).raise_for_status().json()
        dep_limit_before = (dep.get("global_concurrency_limit") or {}).get("limit")
        api.patch(f"/deployments/{dep['id']}", json={"concurrency_limit": CONCURRENT}).raise_for_status()
        dep = api.get(f"/deployments/{dep['id']}").raise_for_status().json()
        dep_limit_after = (dep.get("global_concurrency_limit") or {}).get("limit")
        pool = api.get(f"/work_pools/{orchestrate.work_pool}").raise_for_status().json()
        report.emit(part="concurrent", setup="limits", global_limit=orchestrate.concurrency_limit,
                    global_limit_before=before["limit"], global_limit_after=after["limit"],
                    set_via="client" if raised.returncode == 0 else "REST PATCH",
                    deployment_limit_before=dep_limit_before, deployment_limit_after=dep_limit_after,
                    deployment_collision_strategy=(dep.get("concurrency_options") or {}).get("collision_strategy"),
                    work_pool_limit=pool.get("concurrency_limit"),
                    worker_limit="none (`prefect worker start` without --limit: no per-worker cap)")

        progress(f"concurrent: starting {CONCURRENT} retrain-on-demand runs at once (seeds 1..{CONCURRENT})")
        t0 = time.perf_counter()
        run_ids = [trigger(api, {"parameters": {"seed": seed}, "reason": f"bench concurrent seed {seed}"})
                   for seed in range(1, CONCURRENT + 1)]
        done = await_runs(api, run_ids, timeout=3600)
        batch_client_s = round(time.perf_counter() - t0, 3)
        progress(f"concurrent: all {CONCURRENT} runs finished in {batch_client_s:.1f}s")
        figures = [run_figures(api, done[r]["run"]) for r in run_ids]
        for seed, fig in enumerate(figures, start=1):
            report.emit(part="concurrent", seed=seed, **_public(fig))
        walls = [f["wall_s"] for f in figures if f["wall_s"] is not None]
        starts = [f["_created"] for f in figures]
        ends = [f["_end"] for f in figures if f["_end"]]
        batch_api_s = _secs(min(starts), max(ends)) if ends else None
        intervals = [iv for f in figures for iv in f["_stage_intervals"]]
        report.emit(part="concurrent", summary="batch", runs=CONCURRENT,
                    batch_wall_client_s=batch_client_s, batch_wall_api_s=batch_api_s,
                    sum_of_run_walls_s=round(sum(walls), 3),
                    batch_over_sum=round(batch_api_s / sum(walls), 3) if batch_api_s and walls else None,
                    effective_parallelism=round(sum(walls) / batch_api_s, 3) if batch_api_s and walls else None,
                    max_concurrent_stage_tasks=_max_overlap(intervals),
                    runs_that_awaited_a_slot=sum(1 for f in figures if f["awaited_concurrency_slot"]),
                    load_avg_1m=round(os.getloadavg()[0], 2))
        if reference and reference.get("wall_s") and batch_api_s:
            # one full run alone on engine B (part 1, seed 0): what four would take one after the other
            sequential = round(CONCURRENT * reference["wall_s"], 3)
            report.emit(part="concurrent", summary="against one run alone (engine B's full run of part 1)",
                        single_run_wall_s=reference["wall_s"], sequential_estimate_s=sequential,
                        batch_over_sequential_estimate=round(batch_api_s / sequential, 3),
                        mean_run_wall_over_single=round(sum(walls) / len(walls) / reference["wall_s"], 3))

        # ---- corruption checks
        def check(name: str, ok: bool, **detail: Any) -> None:
            report.emit(part="concurrent", check=name, result="ok" if ok else "failed", **detail)

        states = {f["flow_run"]: f["state"] for f in figures}
        check("all_runs_completed", all(s == "COMPLETED" for s in states.values()), states=states)

        tags = subprocess.run(["git", "tag", "--list", "run-*"], cwd=project, capture_output=True, text=True,
                              check=True).stdout.split()
        runs_dir = project / orchestrate.runs_dir
        worktrees = {}
        for fig in figures:
            safe = re.sub(r"[^A-Za-z0-9_-]+", "-", fig["flow_run"]).strip("-")[:40]
            found = sorted(p for p in runs_dir.glob(f"*-{safe}") if p.is_dir())
            worktrees[fig["flow_run"]] = found[-1] if found else None
        missing_tags = [n for n, p in worktrees.items() if p is None or f"run-{p.name}" not in tags]
        check("git_tags", len(tags) == CONCURRENT and not missing_tags, tags=tags, runs_without_tag=missing_tags)

        fsck = subprocess.run(["git", "fsck", "--no-progress"], cwd=project, capture_output=True, text=True)
        check("git_fsck", fsck.returncode == 0, output=(fsck.stdout + fsck.stderr).strip()[-500:])

        statuses, clouds = {}, {}
        for name, path in worktrees.items():
            if path is None:
                statuses[name] = clouds[name] = "no worktree"
                continue
            proc = _dvc(path, "status")
            statuses[name] = (proc.stdout + proc.stderr).strip()[-300:]
            proc = _dvc(path, "status", "--cloud")
            clouds[name] = (proc.stdout + proc.stderr).strip()[-300:]
        check("dvc_status_up_to_date", all("up to date" in s for s in statuses.values()), outputs=statuses)
        check("dvc_status_cloud_in_sync", all("in sync" in s for s in clouds.values()), outputs=clouds)

        dvc_commands = _dvc(project, "--help").stdout
        has_fsck = re.search(r"^\s+fsck\s", dvc_commands, re.M) is not None
        cache_count, cache_bad = _md5_objects(project / ".dvc" / "cache")
        remote_count, remote_bad = _md5_objects(work / "dvc-remote")
        check("dvc_cache_objects_hash_to_their_names", not cache_bad and cache_count > 0, objects=cache_count,
              mismatched=cache_bad, dvc_has_fsck=has_fsck)
        check("dvc_remote_objects_hash_to_their_names", not remote_bad and remote_count > 0, objects=remote_count,
              mismatched=remote_bad)

        import torch

        loaded = {}
        for name, path in worktrees.items():
            model = path / "models" / "finetuned" / "model.pt" if path else None
            try:
                state = torch.load(model, weights_only=True, map_location="cpu")
                loaded[name] = f"ok: {len(state)} tensors"
            except Exception as err:  # noqa: BLE001 - reported, not raised
                loaded[name] = f"failed: {type(err).__name__}: {err}"[:300]
        check("finetuned_models_load_weights_only", all(v.startswith("ok") for v in loaded.values()),
              models=loaded)
        digests = {n: hashlib.md5((p / "models" / "finetuned" / "model.pt").read_bytes()).hexdigest()
                   for n, p in worktrees.items() if p and (p / "models" / "finetuned" / "model.pt").is_file()}
        check("finetuned_models_distinct", len(set(digests.values())) == CONCURRENT, md5=digests)


def main() -> None:
    os.environ.setdefault("TLOPS_NO_PROGRESS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    report = BenchReport("engines")
    tmp = Path(tempfile.mkdtemp(prefix="tlops-bench-engines-"))
    progress(f"work folder {tmp}")
    from tests.support.postgres import postgres_bin

    failed = []
    try:
        if postgres_bin() is None:
            report.emit(skipped="PostgreSQL server binaries not installed (.ci/run installs Debian's postgresql)")
        parts = (("overhead", part_overhead), ("concurrent", part_concurrent)) if postgres_bin() else ()
        overhead: dict = {}
        for name, part in parts:
            try:
                if name == "overhead":
                    overhead = part(report, tmp)
                else:
                    part(report, tmp, reference=(overhead.get("B") or [None])[0])
            except Exception as err:  # noqa: BLE001 - the other part still runs; the bench exits non-zero
                progress(f"part {name} failed: {type(err).__name__}: {err}")
                report.emit(part=name, error=f"{type(err).__name__}: {err}"[-2000:])
                failed.append(name)
    finally:
        os.chdir(ROOT)
        shutil.rmtree(tmp, ignore_errors=True)  # projects, worktrees, caches, server homes
        progress(f"removed {tmp}")
    report.emit(total_s=round(time.perf_counter() - _T0, 1), failed_parts=failed)
    report.save()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
