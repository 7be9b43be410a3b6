"""What a run started from the dashboard may change: how a model is trained and evaluated, nothing else.

Anyone who can open the Prefect dashboard can start a run with parameters, while the machine that runs
it holds the data, the registry and the credentials, and params.yaml holds the gates that decide what
ships. So form values (the retrain form's fields and its ``extra`` dictionary, the drift check's batch)
are checked against an allow-list before they reach a run's params.yaml:

- :data:`FORM_KEYS` are the hyperparameters a form may set (learning rates, epochs, strategy,
  candidates, budgets, seeds, evaluation sizes). Every other key is refused with one line saying it is
  set in params.yaml: each gate (``validate.*``, ``promote.*``, ``export.*``, the verdict's
  ``evaluate.alpha``/``confidence``/``min_gain``, ``drift.*``), each limit and location
  (``source.max_*``, ``orchestrate.*``, weights, endpoints), and the host's resources (workers, ranks).
  An allow-list, so a key added to the schema later is refused until someone decides otherwise here.
- a source (:data:`SOURCE_KEYS`) is ``sklearn-digits``, ``torchvision:<Dataset>`` (read from
  params.yaml's download root, downloads as params.yaml allows), ``s3://`` in a bucket params.yaml
  lists (``orchestrate.form_s3_buckets``, or the bucket of its own source), or a local folder inside
  params.yaml's own source folder or ``orchestrate.form_source_roots``, links followed, and never inside
  the project's runs, registry or dot folders.

Profiles (``params.<profile>.yaml``) are project files, reviewed like params.yaml, and are not confined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["FORM_KEYS", "SOURCE_KEYS", "confine_form_overrides"]

SOURCE_KEYS = ("source.location", "shift.source")
FORM_KEYS = frozenset({
    "common.seed", "common.image_size", "common.device",
    "source.location", "ingest.budget_per_class", "ingest.budget_fraction",
    "shift.source", "shift.corruptions", "shift.severities", "shift.assignment", "shift.include_clean",
    "shift.per_cell",
    "select.candidates", "select.rank_by", "select.sample_per_class", "select.knn_k", "select.cv_folds",
    "select.tie_tolerance", "select.max_params_m", "select.max_gflops", "select.max_latency_ms",
    "select.batch_size",
    "freeze.strategy", "freeze.depth", "freeze.epochs", "freeze.lr", "freeze.probe_cs", "freeze.layer_decay",
    "freeze.gradual_every", "freeze.gradual_step", "freeze.bn_policy",
    "train.optimizer", "train.weight_decay", "train.momentum", "train.batch_size", "train.min_epoch_steps",
    "train.eval_batch_size", "train.warmup_epochs", "train.label_smoothing", "train.grad_clip", "train.augment",
    "train.amp", "train.cpu_bf16", "train.channels_last", "train.compile",
    "finetune.patience", "finetune.feature_cache", "finetune.cache_views",
    "baseline.lr", "baseline.patience", "baseline.max_epochs",
    "curve.budgets", "curve.seeds", "curve.image_size", "curve.val_per_class",
    "evaluate.ece_bins", "evaluate.fgsm_epsilons", "evaluate.attack_images", "evaluate.interpret_classes",
    "evaluate.ideal_steps", "evaluate.tv_weight", "evaluate.adversarial_step", "evaluate.adversarial_max_steps",
})
_NAMED_SOURCES = ("sklearn-digits",)
_PREFIXED_SOURCES = ("torchvision:",)
# inside the project, what a source never is: run worktrees, the registry, git/DVC/Prefect state
_NEVER_SOURCES = (".git", ".dvc", ".prefect", ".venv")


def confine_form_overrides(overrides: dict[str, Any], project: Path, params: dict[str, Any]) -> None:
    """Refuse form overrides outside the allow-list and sources outside what params.yaml admits.

    Args:
        overrides: ``{"section.key": value}`` from the dashboard form.
        project: the main checkout (relative local paths resolve against it).
        params: the project's params.yaml as committed (its sources, ``orchestrate.form_*``, runs and registry).
    Raises:
        ValueError: one line naming the key (and value) and where it may be set instead.
    """
    for key, value in overrides.items():
        if key not in FORM_KEYS:
            raise ValueError(_refusal(key))
        if key in SOURCE_KEYS and value is not None:
            _check_source(key, str(value), project, params)


def _refusal(key: str) -> str:
    sections = {k.split(".")[0] for k in FORM_KEYS}
    if key in sections:
        example = sorted(k for k in FORM_KEYS if k.startswith(key + "."))[0]
        return f"{key}: refused from the dashboard: give the keys of a section one by one, e.g. {example!r}"
    return (f"{key}: refused from the dashboard, which sets training and evaluation hyperparameters only "
            "(docs/orchestrate.md lists them); set it in params.yaml, where changes are reviewed")


def _check_source(key: str, value: str, project: Path, params: dict[str, Any]) -> None:
    if value in _NAMED_SOURCES or value.startswith(_PREFIXED_SOURCES):
        return
    orchestrate = params.get("orchestrate") or {}
    if value.startswith("s3://"):
        bucket = value.removeprefix("s3://").split("/")[0]
        buckets = {*orchestrate.get("form_s3_buckets", []), *_own_buckets(params)}
        if bucket not in buckets:
            raise ValueError(f"{key} = {value!r}: refused from the dashboard: bucket {bucket!r} is not one params.yaml "
                             f"admits ({', '.join(sorted(buckets)) or 'none'}); add it to "
                             "orchestrate.form_s3_buckets in params.yaml")
        return
    if "://" in value:
        raise ValueError(f"{key} = {value!r}: refused from the dashboard: only sklearn-digits, torchvision:, s3:// "
                         "or a local folder are sources")
    target = _resolve(value, project)
    roots = [*_own_folders(params, project),
             *(_resolve(root, project) for root in orchestrate.get("form_source_roots", []))]
    if not any(target.is_relative_to(root) for root in roots):
        raise ValueError(f"{key} = {value!r}: refused from the dashboard: {target} is outside the folders params.yaml "
                         f"admits ({', '.join(map(str, roots)) or 'none'}); add its folder to "
                         "orchestrate.form_source_roots in params.yaml")
    for never in _never_folders(params, project):
        if target.is_relative_to(never):
            raise ValueError(f"{key} = {value!r}: refused from the dashboard: {target} lies in {never}, which holds "
                             "the pipeline's own state (runs, registry, git/DVC), never a source")


def _resolve(path: str, project: Path) -> Path:
    """The real location (links followed, ``..`` removed) of a path given relative to the project."""
    return Path(os.path.realpath(project / Path(path).expanduser()))


def _own_sources(params: dict[str, Any]) -> list[str]:
    return [s for s in ((params.get("source") or {}).get("location"), (params.get("shift") or {}).get("source")) if s]


def _own_buckets(params: dict[str, Any]) -> Iterable[str]:
    return [s.removeprefix("s3://").split("/")[0] for s in _own_sources(params) if s.startswith("s3://")]


def _own_folders(params: dict[str, Any], project: Path) -> Iterable[Path]:
    """The folders of params.yaml's own local sources (a table's folder, or the folder itself)."""
    for source in _own_sources(params):
        if source in _NAMED_SOURCES or source.startswith(_PREFIXED_SOURCES) or "://" in source:
            continue
        path = _resolve(source, project)
        yield path.parent if path.suffix.lower() in (".csv", ".parquet") else path


def _never_folders(params: dict[str, Any], project: Path) -> Iterable[Path]:
    yield from (_resolve(name, project) for name in _NEVER_SOURCES)
    yield _resolve((params.get("orchestrate") or {}).get("runs_dir", "runs"), project)
    registry = (params.get("promote") or {}).get("registry", "registry")
    if "://" not in registry:
        yield _resolve(registry, project)
