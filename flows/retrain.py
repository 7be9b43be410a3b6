"""The `retrain` flow: one task per stage, each running `dvc repro <stage>` in the run's own worktree.

Wiring only: the worktree, DVC calls, promotion and the summary live in pipeline/.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run, task_run
from prefect.settings import PREFECT_UI_URL
from prefect.tasks import exponential_backoff

from flows.engine import ensure_concurrency_limit
from flows.limits import run_time_limit, training_slot
from flows.parameters import RetrainParameters
from flows.server import ServerStartFailed, temporary_server
from pipeline.common.errors import TransientError
from pipeline.common.threads import busy_note, job
from pipeline.common.threads import resolve as resolve_threads
from pipeline.config import OrchestrateParams, load_params
from pipeline.project import built_stages, find_root, in_dependency_order
from pipeline.common.run_names import run_name
from pipeline.runs.notify import EVENTS, emit, failure_event, run_events
from pipeline.runs.publish import publish_reports
from pipeline.runs.summary import headline_table, model_card, promotion_checks, render_summary, stage_metrics
from pipeline.runs.workspace import RunWorkspace, prune_runs, release_run

__all__ = ["retrain", "RETRY_POLICY", "retrying", "notify_on_failure", "prune_on_failure", "announce"]


def _only_transient(task, task_run, state) -> bool:
    """Retry on network/storage hiccups only, never on bad data or a bug."""
    return isinstance(state.result(raise_on_failure=False), TransientError)


# the waits here are the param's default; a run takes its project's (:func:`retrying`)
RETRY_POLICY = dict(retries=3, retry_condition_fn=_only_transient, cache_policy=NO_CACHE,
                    retry_delay_seconds=exponential_backoff(OrchestrateParams().retry_backoff_s))


def retrying(stage_task: Task, orchestrate: OrchestrateParams) -> Task:
    """``stage_task`` retried after ``orchestrate.retry_backoff_s`` seconds, then twice and four times that."""
    return stage_task.with_options(retry_delay_seconds=exponential_backoff(orchestrate.retry_backoff_s))


@task(name="prepare-run", cache_policy=NO_CACHE)
def prepare(project: str, name: str, overrides: dict[str, Any]) -> str:
    """Create the run's worktree with its parameter overrides."""
    return str(RunWorkspace.create(Path(project), name, overrides=overrides).path)


@task(name="stage", task_run_name="{stage}", **RETRY_POLICY)
def run_stage(project: str, name: str, stage: str, upstream_done: bool = False) -> dict[str, Any]:
    """Run one stage through DVC in the run's worktree; a retry (after a kill) resumes from its checkpoint.
    ``upstream_done``: the flow ran every earlier stage of the chain in this worktree (RunWorkspace.repro)."""
    attempt, logger = task_run.run_count, get_run_logger()
    workspace = RunWorkspace.open(Path(project), name)
    share = resolve_threads(workspace.limits.threads)  # what the stage takes as it starts (its log keeps quiet)
    logger.info("stage %s: %d thread(s) (%s)", stage, share.threads, share.reason)
    if busy := busy_note(share):
        logger.warning("stage %s: %s", stage, busy)
    # each line the stage prints (per-epoch lines, progress) reaches the run log while the stage runs
    result = workspace.repro(stage, resume=attempt > 1, on_line=lambda line: logger.info("%s | %s", stage, line),
                             upstream_done=upstream_done)
    logger.info("stage %s: %s in %.1fs (attempt %d)", stage, result.status, result.seconds, attempt)
    return {**result.as_dict(), "attempt": attempt}


@task(name="version-run", **RETRY_POLICY)
def version(project: str, name: str, message: str) -> str:
    """Commit params.yaml + dvc.lock on the run branch, tag it, push outputs to the DVC remote."""
    workspace = RunWorkspace.open(Path(project), name)
    sha = workspace.commit(message)
    workspace.push()
    return sha


@task(name="publish-reports", **RETRY_POLICY)
def publish(workspace: str, name: str) -> list[tuple[str, str]]:
    """Upload the run's reports where configured; (label, http(s) link) for the dashboard."""
    return publish_reports(Path(workspace), name, load_params(Path(workspace) / "params.yaml").orchestrate)


def _run_url(run_id: Any) -> str | None:
    ui = PREFECT_UI_URL.value()
    return f"{ui}/runs/flow-run/{run_id}" if ui and run_id else None


def _routed() -> list[str]:
    """``orchestrate.events`` of the project's params.yaml (every event when it cannot be read: a failure
    report must not depend on the file that may have caused it)."""
    try:
        return list(load_params(find_root() / "params.yaml").orchestrate.events)
    except Exception:  # noqa: BLE001
        return list(EVENTS)


def notify_on_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed hook: the ``run.failed`` event (pipeline/runs/notify.py)."""
    emit(*failure_event(flow.name, flow_run.name, state.name, state.message or "", url=_run_url(flow_run.id)),
         routed=_routed())


def announce(workspace: Path, name: str, kinds: tuple[str, ...] = EVENTS) -> list[str]:
    """Send the events of ``kinds`` a finished run's metrics hold (negative verdict, drift, promotion or refusal)."""
    events = [e for e in run_events(stage_metrics(workspace), name, url=_run_url(flow_run.get_id())) if e[0] in kinds]
    routed = _routed()
    return [emit(event, text, fields, routed=routed)["event"] for event, text, fields in events]


def prune_on_failure(flow, flow_run, state) -> None:
    """on_failure hook (a timeout included): a failed run's worktree counts toward ``orchestrate.keep_runs``
    too, so failed runs do not pile up (pipeline/runs/workspace.py: prune_runs)."""
    project = find_root()
    keep = load_params(project / "params.yaml").orchestrate.keep_runs
    removed = prune_runs(project, keep=keep)
    if removed:
        flow_run_logger(flow_run, flow).info("Removed %d old run worktree(s) (orchestrate.keep_runs = %d): %s",
                                             len(removed), keep, ", ".join(removed))


@flow(name="retrain", log_prints=True, on_failure=[notify_on_failure, prune_on_failure],
      on_crashed=[notify_on_failure])
def retrain(parameters: RetrainParameters = RetrainParameters(), reason: str = "on demand") -> dict[str, Any]:  # noqa: B008 (Prefect builds the deployment's parameter schema from this default)
    """Run the stage chain in a fresh versioned worktree, then publish a summary, metrics and report links.

    The whole run keeps within ``orchestrate.flow_timeout_s`` and waits at most ``orchestrate.slot_timeout_s``
    for the training slot (flows/limits.py).
    """
    project = str(find_root())
    orchestrate = load_params(Path(project) / "params.yaml").orchestrate
    name = run_name(flow_run.get_name() or "local")
    try:
        with run_time_limit(orchestrate, f"retrain run {name}"):
            return _retrain(project, orchestrate, name, parameters, reason)
    finally:  # however the run ends, it is over: prune_runs may count its worktree from now on
        release_run(Path(project), name)


def _retrain(project: str, orchestrate: OrchestrateParams, name: str, parameters: RetrainParameters,
             reason: str) -> dict[str, Any]:
    """The body of :func:`retrain`, within its time limit."""
    overrides = parameters.overrides(Path(project) / "params.yaml")
    ensure_concurrency_limit(orchestrate.concurrency_limit)
    get_run_logger().info("run %s waits for the %r slot (one retrain trains at a time; at most %g s, "
                          "orchestrate.slot_timeout_s)", name, orchestrate.concurrency_limit,
                          orchestrate.slot_timeout_s)
    # counted as a job on this machine once it trains (not while it waits): its stages and a drift check
    # beside it share the cores (pipeline/common/threads.py)
    with training_slot(orchestrate, f"retrain run {name}"), job(f"retrain run {name}"):
        workspace = prepare(project, name, overrides)
        chain, ordered = built_stages(Path(workspace)), in_dependency_order(Path(workspace))
        stage_task, version_task = retrying(run_stage, orchestrate), retrying(version, orchestrate)
        stages = [stage_task(project, name, stage, upstream_done=ordered) for stage in chain if stage != "promote"]
        sha = version_task(project, name, f"run {name}: {reason}")
        if "promote" in chain:  # after the commit, tag and push: a champion never points at data not yet pushed
            stages.append(stage_task(project, name, "promote", upstream_done=ordered))
            sha = version_task(project, name, f"run {name}: promotion decision")
    summary = render_summary(Path(workspace), name=name, reason=reason, overrides=overrides,
                             stages=stages, commit=sha)
    create_markdown_artifact(summary, key="retrain-summary", description=f"run {name}")
    create_table_artifact(headline_table(Path(workspace)), key="retrain-metrics",
                          description=f"headline metrics of run {name}")
    card = model_card(Path(workspace))
    if card is not None:  # a chain cut short has none
        create_markdown_artifact(card, key="model-card", description=f"model card of the candidate of run {name}")
    checks = promotion_checks(Path(workspace))
    if checks:
        create_table_artifact(checks, key="promotion-checks", description=f"the blessing of run {name}'s candidate")
    for label, link in retrying(publish, orchestrate)(workspace, name):
        create_link_artifact(link, link_text=label, description=f"{label} of run {name}")
    announce(Path(workspace), name)
    release_run(Path(project), name)  # finished: it counts toward keep_runs as the newest of them
    removed = prune_runs(Path(project), keep=orchestrate.keep_runs)
    if removed:
        print(f"Removed {len(removed)} old run worktree(s) (orchestrate.keep_runs = {orchestrate.keep_runs}; "
              f"finished runs' tags stay): {', '.join(removed)}")
    print(summary)
    return {"run": name, "workspace": workspace, "commit": sha, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    """`make run [PROFILE=gpu]`: one retrain run, end to end, then say where the reports are."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=main.__doc__)
    parser.add_argument("--profile", default=None, help="a params profile, e.g. gpu (params.gpu.yaml)")
    ns = parser.parse_args(argv)
    limit = load_params(find_root() / "params.yaml").orchestrate.server_startup_s
    try:
        with temporary_server(limit):
            result = retrain(RetrainParameters(profile=ns.profile or None), reason="make run")
    except ServerStartFailed as err:  # nothing has run yet: one line saying what to do
        print(f"make run: {err}", file=sys.stderr)
        return 1
    print(f"\nRun {result['run']} done. Its worktree (data, model, reports): {result['workspace']}")
    print(f"Reports: {Path(result['workspace']) / 'reports'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
