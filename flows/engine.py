"""What a Prefect server needs before runs go unattended: the work pool and the shared concurrency limit.

Both are created when missing and left alone when present (an operator may have tuned them in the
dashboard). The retrain flow ensures its concurrency limit itself too, so a run started in any way
(`make run`, `serve`, a worker) is serialised against every other retrain run on the same server.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.base import BaseWorker

__all__ = ["ensure_concurrency_limit", "ensure_work_pool", "job_template"]

# the base job templates of pool types whose worker package is not installed here (docker, kubernetes)
_TEMPLATES = {"kubernetes": Path("infra/k8s/work-pool-template.json"),
              "docker": Path("infra/docker/work-pool-template.json")}


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


def ensure_work_pool(project: Path, name: str, pool_type: str) -> str:
    """Create work pool ``name`` of ``pool_type`` unless it exists; return what was done, for the log.

    Raises:
        ValueError: a pool of that name exists with another type.
    """
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type,
                                                   base_job_template=job_template(project, pool_type)))
            return f"created work pool {name!r} ({pool_type})"
    if pool.type != pool_type:
        raise ValueError(f"work pool {name!r} exists with type {pool.type!r}, but orchestrate.work_pool_type is "
                         f"{pool_type!r}: remove the pool or choose another orchestrate.work_pool")
    return f"work pool {name!r} ({pool_type}) already exists"
