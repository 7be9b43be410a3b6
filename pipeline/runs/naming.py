"""Run names, branches and tags: made here and nowhere else.

A run named ``<UTC timestamp>-<label>`` works on branch ``runs/<name>`` and is tagged ``run-<name>``
when committed; a stage run outside a run worktree (by hand) gets a ``<timestamp>-manual`` name and no tag.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["run_name", "branch_of", "tag_of", "run_identity"]
_BRANCH_PREFIX = "runs/"


def run_name(label: str) -> str:
    """A unique, git-ref-safe run name: UTC timestamp plus a label (e.g. the Prefect flow run name)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{safe}"


def branch_of(name: str) -> str:
    """The git branch a run works on."""
    return f"{_BRANCH_PREFIX}{name}"


def tag_of(name: str) -> str:
    """The git tag a committed run gets."""
    return f"run-{name}"


def run_identity(checkout: Path) -> dict[str, Any]:
    """The run a checkout belongs to: its name and tag (from the ``runs/<name>`` branch), or a manual name."""
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=checkout, capture_output=True,
                            text=True).stdout.strip()
    if branch.startswith(_BRANCH_PREFIX):
        name = branch.removeprefix(_BRANCH_PREFIX)
        return {"run_name": name, "run_tag": tag_of(name)}
    return {"run_name": run_name("manual"), "run_tag": None}
