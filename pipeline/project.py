"""Where the project is, which run a checkout belongs to, and what dvc.yaml declares: the one definition of
stage paths.

Stage code never builds ``data/...`` paths itself. ``dvc.yaml`` passes every path on the stage's
command line, and running ``tlops <stage>`` by hand with no paths takes the same ones from there.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import yaml

from pipeline.common.processes import run_command
from pipeline.common.run_names import BRANCH_PREFIX, run_name, tag_of

__all__ = ["DVC_YAML", "find_root", "main_checkout", "dvc_stages", "built_stages", "declared_options",
           "declared_paths", "in_dependency_order", "replaced_outputs", "dvc", "dvc_status", "GIT_QUERY_TIMEOUT_S",
           "run_identity"]
DVC_YAML = "dvc.yaml"
GIT_QUERY_TIMEOUT_S = 60.0  # a local, read-only git query (rev-parse): a hang here is a broken repository


def find_root(start: Path | None = None) -> Path:
    """Return the nearest directory at or above ``start`` (default: cwd) that holds dvc.yaml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / DVC_YAML).is_file():
            return candidate
    raise FileNotFoundError(f"no dvc.yaml in {here} or any parent: run tlops inside the project")


def main_checkout(root: Path) -> Path:
    """The main working tree of the git repository ``root`` belongs to (``root`` itself unless it is a
    run worktree); shared state such as the model registry is resolved against it."""
    out = run_command(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], root,
                      timeout=GIT_QUERY_TIMEOUT_S, limit_name="a fixed limit for local git queries")
    return Path(out.stdout.strip()).parent if out.returncode == 0 else root


def dvc_stages(root: Path) -> dict[str, dict]:
    """The ``stages`` of ``<root>/dvc.yaml``: the one place dvc.yaml is read."""
    return (yaml.safe_load((Path(root) / DVC_YAML).read_text()) or {}).get("stages") or {}


def built_stages(root: Path) -> list[str]:
    """The stages that dvc.yaml declares, in its order: the chain order (tests/test_project_dvc_graph.py holds dvc.yaml
    to the stage table, pipeline/stages/__init__.py, which this bottom-floor module does not import)."""
    return list(dvc_stages(root))


def in_dependency_order(root: Path) -> bool:
    """Whether no stage in dvc.yaml depends on the outputs of a stage declared after it: then a chain run in
    that order has brought each stage's upstream up to date before the stage (the retrain flow's
    ``--single-item``); a dvc.yaml edited out of order keeps DVC's own walk of the upstream graph."""
    stages = list(dvc_stages(root).values())
    for i, stage in enumerate(stages):
        later = [PurePosixPath(out) for other in stages[i + 1:] for kind in ("outs", "metrics", "plots")
                 for out in _paths(other, kind)]
        # a dep is a later output, or a file inside a later output folder, or a folder holding one
        if any(dep.is_relative_to(out) or out.is_relative_to(dep)
               for dep in map(PurePosixPath, _paths(stage, "deps")) for out in later):
            return False
    return True


def declared_paths(root: Path, stage: str, kind: str) -> list[str]:
    """The paths a stage declares under ``kind`` (``deps``, ``outs``, ``metrics`` or ``plots``)."""
    return _paths(dvc_stages(root).get(stage, {}), kind)


def _paths(stage_yaml: dict, kind: str) -> list[str]:
    """The paths of one stage's ``kind`` entries (a plain path, or a path with its options)."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in stage_yaml.get(kind) or []]


def replaced_outputs(root: Path, stage: str) -> list[str]:
    """The outputs a stage replaces on each run: its outs, metrics and plots, less ``persist: true``
    ones (a cache or Workspace that grows across runs)."""
    stage_yaml = dvc_stages(root).get(stage, {})
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage_yaml.get(kind) or []:
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            if not (options or {}).get("persist"):
                paths.append(path)
    return paths


def declared_options(root: Path, stage: str) -> dict[str, str | bool]:
    """Parse the ``--option value`` pairs (and bare ``--flag``s) of a stage's cmd in dvc.yaml."""
    stages = dvc_stages(root)
    if stage not in stages:
        return {}
    tokens = shlex.split(stages[stage]["cmd"])
    options: dict[str, str | bool] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            name = token[2:].replace("-", "_")
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                options[name] = tokens[i + 1]
                i += 1
            else:
                options[name] = True
        i += 1
    return options


def dvc(root: Path, *args: str, check: bool = True, capture: bool = True, timeout: float,
        limit_name: str, extra_env: dict[str, str] | None = None,
        on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
    """Run the DVC of this environment in ``root``, stopped with everything it started after ``timeout``.

    Args:
        root: directory to run in (a DVC project or worktree).
        args: DVC arguments, e.g. ``"repro", "ingest"``.
        check: raise when DVC exits non-zero.
        capture: capture stdout/stderr (otherwise they stream to the terminal).
        timeout: seconds it may run (:func:`pipeline.common.processes.run_command`).
        limit_name: the param that sets ``timeout``, for the message.
        extra_env: variables added to this environment for the command (e.g. the resume request).
        on_line: receives each output line while DVC runs (live logs); the output is then all in stdout.
    Returns:
        The completed process.
    """
    # stage commands call `tlops`: put this environment's scripts first on PATH, venv activated or not;
    # PYTHONPATH makes them import the code of `root` (a run's worktree, at its commit), not the editable
    # install's main checkout, so a run's tag names the code that really ran
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(root).resolve()), os.environ.get("PYTHONPATH")])),
           **(extra_env or {})}
    proc = run_command([sys.executable, "-m", "dvc", *args], root, timeout=timeout, limit_name=limit_name, env=env,
                       capture=capture, on_line=on_line)
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip() or f"exit {proc.returncode}"
        raise RuntimeError(f"dvc {' '.join(args)} failed in {root}: {detail}")
    return proc


def dvc_status(root: Path, timeout: float) -> dict[str, list]:
    """Return ``dvc status --json``: stage name -> list of changes (absent when up to date)."""
    out = dvc(root, "status", "--json", check=False, timeout=timeout, limit_name="orchestrate.command_timeout_s")
    if out.returncode != 0:
        raise RuntimeError(f"dvc status failed in {root}: {out.stderr.strip()}")
    raw = json.loads(out.stdout or "{}")
    return {key.split(":")[-1]: value for key, value in raw.items()}


def run_identity(checkout: Path) -> dict[str, Any]:
    """The run a checkout belongs to: its name and tag (from the ``runs/<name>`` branch), or a manual name."""
    branch = run_command(["git", "rev-parse", "--abbrev-ref", "HEAD"], checkout, timeout=GIT_QUERY_TIMEOUT_S,
                         limit_name="a fixed limit for local git queries").stdout.strip()
    if branch.startswith(BRANCH_PREFIX):
        name = branch.removeprefix(BRANCH_PREFIX)
        return {"run_name": name, "run_tag": tag_of(name)}
    return {"run_name": run_name("manual"), "run_tag": None}
