"""What a run started from the dashboard may change: hyperparameters yes, where the pipeline reaches on the host no.

Anyone who can open the Prefect dashboard can start a run with parameters, while the machine that runs
it holds the data, the registry and the credentials. So form values (the retrain form's fields and its
``extra`` dictionary, the drift check's batch) are confined before they reach a run's params.yaml:

- keys that choose a host location, an endpoint, credentials or a download permission
  (:data:`LOCATION_KEYS`) are refused: they belong in params.yaml, where changes are reviewed;
- a source (:data:`SOURCE_KEYS`) that is a local path must lie inside the project, inside the folder of
  the source params.yaml names, or inside one of params.yaml's ``ingest.allowed_roots``; ``s3://``,
  ``torchvision:`` and ``sklearn-digits`` sources pass (the credentials bound what S3 can reach);
- a whole section or a parent of such a key (``{"ingest": {...}}``) is refused: set the leaf keys.

Profiles (``params.<profile>.yaml``) are project files, not form values, and are not confined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["LOCATION_KEYS", "SOURCE_KEYS", "confine_form_overrides"]

LOCATION_KEYS = ("ingest.allowed_roots", "ingest.download_root", "ingest.s3_endpoint_url", "ingest.s3_profile",
                 "ingest.allow_download", "select.weights", "select.hub_dir", "select.allow_download",
                 "promote.registry", "orchestrate.runs_dir", "orchestrate.keep_runs", "orchestrate.reports_store",
                 "orchestrate.reports_url", "orchestrate.concurrency_limit", "drift.ui_host", "drift.ui_port")
SOURCE_KEYS = ("ingest.source", "shift.source")
_REMOTE_SOURCES = ("s3://", "torchvision:")


def confine_form_overrides(overrides: dict[str, Any], project: Path, params: dict[str, Any]) -> None:
    """Refuse form overrides that reach outside what params.yaml admits (see the module docstring).

    Args:
        overrides: ``{"section.key": value}`` from the dashboard form.
        project: the main checkout (relative local sources resolve against it).
        params: the project's params.yaml as committed (its source and ``ingest.allowed_roots``).
    Raises:
        ValueError: names the key, the value and where it may be set instead.
    """
    for key, value in overrides.items():
        parts = key.split(".")
        for guarded in (*LOCATION_KEYS, *SOURCE_KEYS):
            leaf = guarded.split(".")
            if guarded in LOCATION_KEYS and parts[: len(leaf)] == leaf:
                raise ValueError(f"{key}: refused from the dashboard: it sets {guarded}, which decides where the "
                                 "pipeline reads, writes or connects on this host; set it in params.yaml")
            if len(parts) < len(leaf) and leaf[: len(parts)] == parts:
                raise ValueError(f"{key}: refused from the dashboard: a whole section would also set {guarded}; "
                                 f"give its keys one by one, e.g. {guarded!r}")
        if key in SOURCE_KEYS and value is not None:
            _check_source(key, str(value), project, params)


def _check_source(key: str, value: str, project: Path, params: dict[str, Any]) -> None:
    if value == "sklearn-digits" or value.startswith(_REMOTE_SOURCES):
        return
    if "://" in value:
        raise ValueError(f"{key} = {value!r}: refused from the dashboard: only s3://, torchvision:, sklearn-digits "
                         "or a local path are sources")
    ingest = params.get("ingest") or {}
    roots = [project, *_local_folder(ingest.get("source"), project),
             *(_resolve(root, project) for root in ingest.get("allowed_roots") or [])]
    target = _resolve(value, project)
    if not any(target == root or target.is_relative_to(root) for root in roots):
        raise ValueError(f"{key} = {value!r}: refused from the dashboard: {target} is outside the project and the "
                         f"folders params.yaml admits ({', '.join(str(r) for r in roots)}); add its folder to "
                         "ingest.allowed_roots in params.yaml")


def _resolve(path: str, project: Path) -> Path:
    """The real location (links followed, ``..`` removed) of a path given relative to the project."""
    return Path(os.path.realpath(project / Path(path).expanduser()))


def _local_folder(source: str | None, project: Path) -> Iterable[Path]:
    """The folder of params.yaml's own source when it is local (a table's folder, or the folder itself)."""
    if not source or source == "sklearn-digits" or source.startswith(_REMOTE_SOURCES):
        return []
    path = _resolve(source, project)
    return [path.parent if path.suffix.lower() in (".csv", ".parquet") else path]
