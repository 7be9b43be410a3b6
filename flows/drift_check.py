"""The `drift-check` flow: test the newest images against the champion; start `retrain` on drift.

It works in a worktree made from the champion's own run tag, so the reference data and the model are
exactly the champion's; then it makes the current set (the batch the form names; else, with
``serve.sample_store`` set, every batch ``tlops serve`` sampled that no check has read, newest first up to
``serve.sample_check_max_images`` images, each marked checked once this check has read it (older ones marked
superseded); else the domain-shift set),
runs the drift stage through DVC, saves the champion's predictions on that batch (`tlops predict`), and
when drift is detected starts the retrain deployment params.yaml names, with the reason attached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.limits import run_time_limit
from flows.parameters import DriftCheckParameters
from flows.retrain import (RETRY_POLICY, announce, notify_on_failure, prune_on_failure, publish, retrying, run_stage,
                           version)
from pipeline.common.threads import job
from pipeline.config import Params, load_params
from pipeline.project import find_root, main_checkout
from pipeline.registry import open_registry
from pipeline.common.run_names import run_name
from pipeline.runs.summary import drift_summary
from pipeline.runs.workspace import RunWorkspace, release_run, runs_root
from pipeline.serving.samples import (SampledBatch, listing_path, mark_checked, unchecked_batches,
                                      write_listing)

__all__ = ["drift_check"]
CURRENT_SET = "data/current"  # dvc.yaml: the shift stage's output, the batch the drift stage checks
PREDICTIONS_DIR = "predictions"  # in the run's worktree (git-ignored)


@task(name="prepare-drift-check", cache_policy=NO_CACHE)
def prepare(project: str, name: str, champion_tag: str, overrides: dict[str, Any]) -> str:
    """A worktree at the champion's run tag, its data and model checked out."""
    workspace = RunWorkspace.create(Path(project), name, overrides=overrides, base=champion_tag)
    workspace.checkout()
    return str(workspace.path)


@task(name="predict-batch", **RETRY_POLICY)
def predict_current(project: str, name: str) -> dict[str, Any]:
    """The champion's predictions on the batch just checked (the current set), saved in the worktree."""
    logger = get_run_logger()
    summary = RunWorkspace.open(Path(project), name).predict(CURRENT_SET, PREDICTIONS_DIR,
                                                             on_line=lambda line: logger.info("predict | %s", line))
    logger.info("predictions: %d of %d images classified by %s (%d refused)", summary["predicted"],
                summary["images"], summary["model_version"], summary["refused"])
    return summary


@flow(name="drift-check", log_prints=True, on_failure=[notify_on_failure, prune_on_failure],
      on_crashed=[notify_on_failure])
def drift_check(parameters: DriftCheckParameters = DriftCheckParameters()) -> dict[str, Any]:  # noqa: B008 (Prefect builds the deployment's parameter schema from this default)
    """Check the newest images (a batch, what was served since the last check) for drift against the champion;
    start retrain when it drifted.

    The whole check keeps within ``orchestrate.flow_timeout_s`` (flows/limits.py).
    """
    project = find_root()
    params = load_params(project / "params.yaml")
    registry = open_registry(params.promote.registry, main_checkout(project))
    champion = registry.champion()
    if champion is None:
        print("No champion in the registry yet: nothing to check drift against (run retrain first).")
        return {"drift_detected": None, "reason": "no champion"}
    name = run_name(flow_run.get_name() or "drift-check")
    try:
        # one job on this machine: beside a retrain, each takes half the cores (pipeline/common/threads.py)
        with run_time_limit(params.orchestrate, f"drift check {name}"), job(f"drift check {name}"):
            return _check(project, params, champion, name, parameters)
    finally:  # however the check ends, it is over: prune_runs may count its worktree from now on
        release_run(project, name)


def _check(project: Path, params: Params, champion: dict[str, Any], name: str,
           parameters: DriftCheckParameters) -> dict[str, Any]:
    """The body of :func:`drift_check`, within its time limit."""
    logger = get_run_logger()
    overrides = parameters.overrides(project / "params.yaml")
    store = params.serve.sample_store if not parameters.batch_source else None  # a form's batch comes first
    served, superseded = (unchecked_batches(store, main_checkout(project), params.serve.sample_check_max_images)
                          if store else ([], []))
    if store and not served:
        print(f"No served batch left to check in {store}: nothing new since the last check.")
        return {"drift_detected": None, "reason": "no new served batch"}
    listing = _read_served(project, params, name, served, superseded, overrides)  # params.yaml's store, not a form's
    # a champion promoted outside a versioned run has no tag: check against the current checkout then
    workspace = Path(prepare(str(project), name, champion.get("run_tag") or "HEAD", overrides))
    if listing is not None:
        logger.info("%d distinct image(s) listed in %s", write_listing(served, listing), listing)
    for stage in ("shift", "drift"):
        retrying(run_stage, params.orchestrate)(str(project), name, stage)
    predicted = retrying(predict_current, params.orchestrate)(str(project), name)
    retrying(version, params.orchestrate)(str(project), name,
                                          f"drift check {name} against champion {champion['version']}")
    verdict, text = drift_summary(workspace, champion["version"],
                                  retrying(publish, params.orchestrate)(str(workspace), name))
    announce(workspace, name, kinds=("drift.detected",))  # the champion's own metrics may be checked out too
    create_markdown_artifact(text, key="drift-check-summary", description=f"drift check {name}")
    create_table_artifact([{"class": label, "images": count} for label, count in predicted["predicted_classes"].items()]
                          + [{"class": "(refused)", "images": predicted["refused"]}], key="drift-check-predictions",
                          description=f"the champion's predictions on the batch checked by {name}: "
                                      f"{Path(workspace) / PREDICTIONS_DIR}")
    for batch in served:  # read and checked: the next check takes newer batches
        mark_checked(store, main_checkout(project), batch.name,
                     {"run": name, "champion": champion["version"], "drift_detected": verdict["drift_detected"]})
    superseded_by = f"not read: {sum(b.images for b in served)} newer image(s) filled serve.sample_check_max_images"
    for batch in superseded:
        mark_checked(store, main_checkout(project), batch.name, {"run": name, "superseded": superseded_by})
    started = None
    if verdict["drift_detected"] and parameters.retrain_on_drift:
        reason = f"drift detected by drift check {name}: {verdict['reason']}"
        logger.warning(reason)
        target = params.orchestrate.drift_retrain_deployment  # params.yaml's, never the form's
        started = run_deployment(target, timeout=0, tags=["drift-triggered"],
                                 parameters={"parameters": parameters.retrain.model_dump(), "reason": reason})
        print(f"Started {target} as flow run {started.name} ({started.id}).")
    return {**verdict, "run": name, "retrain_flow_run": str(started.id) if started else None}


def _read_served(project: Path, params: Params, name: str, served: list[SampledBatch],
                 superseded: list[SampledBatch], overrides: dict[str, Any]) -> Path | None:
    """Point the check's ``shift.source`` at the served batches: one batch's own location, or a table of the images
    of several (returned: it is written once the worktree exists); None when no batch is served."""
    if not served:
        return None
    logger = get_run_logger()
    logger.info("checking %d image(s) the service sampled in %d batch(es): %s", sum(b.images for b in served),
                len(served), ", ".join(b.name for b in served))
    if superseded:
        logger.warning("%d older batch(es) of %d image(s) left unread (superseded): more than "
                       "serve.sample_check_max_images = %d images were waiting", len(superseded),
                       sum(b.images for b in superseded), params.serve.sample_check_max_images)
    if len(served) == 1:
        overrides["shift.source"] = served[0].location
        return None
    # only shift.source changes: a `source` key would make DVC re-ingest, and check against another dataset
    listing = listing_path(served, name, runs_root(project) / name)
    overrides["shift.source"] = str(listing)
    return listing
