"""The `retrain` flow: one task per stage, each running `dvc repro <stage>` in the run's own worktree.

Wiring only: the worktree, DVC calls, promotion and the summary live in pipeline/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.tasks import exponential_backoff

from flows.parameters import RetrainParameters
from pipeline.project import built_stages, find_root
from pipeline.runs.naming import run_name
from pipeline.runs.summary import render_summary, report_links
from pipeline.runs.workspace import RunWorkspace, TransientFailure

__all__ = ["retrain", "RETRY_POLICY"]


def _only_transient(task, task_run, state) -> bool:
    """Retry on network/storage hiccups only, never on bad data or a bug."""
    return isinstance(state.result(raise_on_failure=False), TransientFailure)


RETRY_POLICY = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
                 retry_condition_fn=_only_transient, cache_policy=NO_CACHE)


@task(name="prepare-run", cache_policy=NO_CACHE)
def prepare(project: str, name: str, overrides: dict[str, Any]) -> str:
    """Create the run's worktree with its parameter overrides."""
    return str(RunWorkspace.create(Path(project), name, overrides=overrides).path)


@task(name="stage", task_run_name="{stage}", **RETRY_POLICY)
def run_stage(project: str, name: str, stage: str) -> dict[str, Any]:
    """Run one stage through DVC in the run's worktree; a retry (after a kill) resumes from its checkpoint."""
    attempt = task_run.run_count
    result = RunWorkspace.open(Path(project), name).repro(stage, resume=attempt > 1)
    get_run_logger().info("stage %s: %s in %.1fs (attempt %d)", stage, result.status, result.seconds, attempt)
    return {**result.as_dict(), "attempt": attempt}


@task(name="version-run", **RETRY_POLICY)
def version(project: str, name: str, message: str) -> str:
    """Commit params.yaml + dvc.lock on the run branch, tag it, push outputs to the DVC remote."""
    workspace = RunWorkspace.open(Path(project), name)
    sha = workspace.commit(message)
    workspace.push()
    return sha


@flow(name="retrain", log_prints=True)
def retrain(parameters: RetrainParameters = RetrainParameters(), reason: str = "on demand") -> dict[str, Any]:
    """Run the stage chain in a fresh versioned worktree, then publish a summary artifact."""
    project = str(find_root())
    name = run_name(flow_run.get_name() or "local")
    overrides = parameters.overrides(Path(project) / "params.yaml")
    workspace = prepare(project, name, overrides)
    chain = built_stages(Path(workspace))
    stages = [run_stage(project, name, stage) for stage in chain if stage != "promote"]
    sha = version(project, name, f"run {name}: {reason}")
    if "promote" in chain:  # after the commit, tag and push: a champion never points at data not yet pushed
        stages.append(run_stage(project, name, "promote"))
        sha = version(project, name, f"run {name}: promotion decision")
    summary = render_summary(Path(workspace), name=name, reason=reason, overrides=overrides,
                             stages=stages, commit=sha)
    create_markdown_artifact(summary, key="retrain-summary", description=f"run {name}")
    for label, link in report_links(Path(workspace)):
        create_link_artifact(link, link_text=label, description=f"{label} of run {name}")
    print(summary)
    return {"run": name, "workspace": workspace, "commit": sha, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    """`make run [PROFILE=gpu]`: one retrain run, end to end, then say where the reports are."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=main.__doc__)
    parser.add_argument("--profile", default=None, help="a params profile, e.g. gpu (params.gpu.yaml)")
    ns = parser.parse_args(argv)
    result = retrain(RetrainParameters(profile=ns.profile or None), reason="make run")
    print(f"\nRun {result['run']} done. Its worktree (data, model, reports): {result['workspace']}")
    print(f"Reports: {Path(result['workspace']) / 'reports'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
