"""What a Prefect server needs before runs go unattended: the work pool and the shared concurrency limit.

Both are created when missing and left alone when present (an operator may have tuned them in the
dashboard). The retrain flow ensures its concurrency limit itself too, so a run started in any way
(`make run`, `serve`, a worker) is serialised against every other retrain run on the same server.

A dashboard user's custom run may also set the work pool's job variables, and a pool type's defaults let
that choose the command, the environment, the image, host volumes or a privileged container: anything
on the worker's host. So the pool is created with its job variables locked: only those of
:data:`FREE_JOB_VARIABLES` stay settable, the place a run starts from (``working_dir`` of a process pool,
the ``image`` of the others) may only be the value deploy gives it, and every other variable is fixed
to its default in the template (``additionalProperties: false``: the server refuses a run that names one).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.utilities.templating import apply_values
from prefect.workers.base import BaseWorker

__all__ = ["FREE_JOB_VARIABLES", "ensure_concurrency_limit", "ensure_work_pool", "job_template", "lock_job_variables"]

# the base job templates of pool types whose worker package is not installed here (docker, kubernetes)
_TEMPLATES = {"kubernetes": Path("infra/k8s/work-pool-template.json"),
              "docker": Path("infra/docker/work-pool-template.json")}
# job variables a custom run may set, per pool type: names and labels, and on Kubernetes the resources
# (bounded by the namespace's quotas); everything else is fixed by the pool's template
FREE_JOB_VARIABLES = {"process": frozenset({"name", "labels", "stream_output"}),
                      "docker": frozenset({"name", "labels", "stream_output"}),
                      "kubernetes": frozenset({"name", "labels", "stream_output", "cpu_request", "cpu_limit",
                                               "memory_request", "memory_limit", "gpus"})}


def ensure_concurrency_limit(name: str, slots: int = 1) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # another run created it meanwhile
                pass


def job_template(project: Path, pool_type: str) -> dict:
    """The base job template of a pool type: Prefect's own for ``process``, the project's file for the others."""
    worker = BaseWorker.get_worker_class_from_type(pool_type)
    if worker is not None:
        return worker.get_default_base_job_template()
    path = project / _TEMPLATES[pool_type]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the base job template of a {pool_type} work pool "
                                f"(orchestrate.work_pool_type) is missing")
    return json.loads(path.read_text())


def lock_job_variables(template: dict, free: frozenset[str], pinned: dict[str, Any]) -> dict:
    """A copy of a base job template whose job variables a custom run cannot turn against the host.

    Args:
        template: the pool type's base job template.
        free: variables left settable as they are.
        pinned: variables whose only allowed value is this one (what deploy sets on the deployments).
    Returns:
        The template: ``free`` and ``pinned`` variables in its schema (pinned ones as a one-value enum), the
        others replaced in the job configuration by their defaults and gone from the schema, which admits
        no other names.
    """
    locked = copy.deepcopy(template)
    schema = locked["variables"]
    properties = schema.get("properties", {})
    fixed = {}
    for name in [n for n in properties if n not in free and n not in pinned]:
        spec = properties.pop(name)
        fixed[name] = spec.get("default", {} if spec.get("type") == "object" else None)
    for name, value in pinned.items():
        properties[name] = {**properties.get(name, {}), "enum": [value], "default": value}
    schema["required"] = [n for n in schema.get("required", []) if n in properties]
    schema["additionalProperties"] = False
    locked["job_configuration"] = apply_values(locked["job_configuration"], fixed, remove_notset=False)
    return locked


def _unlocked(template: dict, free: frozenset[str]) -> list[str]:
    """The job variables a custom run could set on an existing pool beyond the free ones."""
    schema = template.get("variables") or {}
    extra = sorted(n for n in schema.get("properties", {}) if n not in free and "enum" not in schema["properties"][n])
    return extra + (["any other name"] if schema.get("additionalProperties", True) is not False else [])


def ensure_work_pool(project: Path, name: str, pool_type: str, pinned: dict[str, Any]) -> str:
    """Create work pool ``name`` of ``pool_type`` unless it exists; return what was done, for the log.

    Args:
        project: the checkout (the docker/kubernetes templates are its files).
        name, pool_type: the pool (orchestrate.work_pool, work_pool_type).
        pinned: the job variables deploy sets on every deployment (the only values a run may give them).
    Raises:
        ValueError: a pool of that name exists with another type.
    """
    free = FREE_JOB_VARIABLES[pool_type]
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = lock_job_variables(job_template(project, pool_type), free, pinned)
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
            return f"created work pool {name!r} ({pool_type}); a custom run may set only {', '.join(sorted(free))}"
    if pool.type != pool_type:
        raise ValueError(f"work pool {name!r} exists with type {pool.type!r}, but orchestrate.work_pool_type is "
                         f"{pool_type!r}: remove the pool or choose another orchestrate.work_pool")
    unlocked = _unlocked(pool.base_job_template, free)
    return f"work pool {name!r} ({pool_type}) already exists" + (
        f"; WARNING: a custom run from the dashboard may set its job variables {', '.join(unlocked)} (the command, "
        "environment or image run on the worker's host): remove the pool and run `make deploy` again to create "
        "it locked" if unlocked else "")
