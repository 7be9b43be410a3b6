"""Where the project is and what dvc.yaml declares: the one definition of stage paths.

Stage code never builds ``data/...`` paths itself. ``dvc.yaml`` passes every path on the stage's
command line, and running ``tlops <stage>`` by hand with no paths takes the same ones from there.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

__all__ = ["find_root", "declared_options", "dvc", "dvc_status"]


def find_root(start: Path | None = None) -> Path:
    """Return the nearest directory at or above ``start`` (default: cwd) that holds dvc.yaml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no dvc.yaml in {here} or any parent: run tlops inside the project")


def declared_options(root: Path, stage: str) -> dict[str, str | bool]:
    """Parse the ``--option value`` pairs (and bare ``--flag``s) of a stage's cmd in dvc.yaml."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
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


def dvc(root: Path, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """Run the DVC of this environment in ``root``."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=check,
                          text=True, capture_output=capture)


def dvc_status(root: Path) -> dict[str, list]:
    """Return ``dvc status --json``: stage name -> list of changes (absent when up to date)."""
    out = dvc(root, "status", "--json", capture=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"dvc status failed in {root}: {out.stderr.strip()}")
    raw = json.loads(out.stdout or "{}")
    return {key.split(":")[-1]: value for key, value in raw.items()}
