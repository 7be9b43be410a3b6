"""Run names, branches and tags: made and checked here and nowhere else.

A run named ``<UTC timestamp>-<label>`` works on branch ``runs/<name>`` and is tagged ``run-<name>``
when committed; a stage run outside a run worktree (by hand) gets a ``<timestamp>-manual`` name and no tag.
The registry's version names are run names, so the format sits here, below the registry and the runs.
"""

from __future__ import annotations

import re
import time
from typing import Any

__all__ = ["run_name", "branch_of", "tag_of", "run_of", "check_run_name", "check_run_tag", "BRANCH_PREFIX"]
BRANCH_PREFIX = "runs/"
_TAG_PREFIX = "run-"
_RUN_NAME = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_-]{1,40}$")  # what run_name makes, and nothing else


def run_name(label: str) -> str:
    """A unique, git-ref-safe run name: UTC timestamp plus a label (e.g. the Prefect flow run name)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:40] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{safe}"


def branch_of(name: str) -> str:
    """The git branch a run works on."""
    return f"{BRANCH_PREFIX}{name}"


def tag_of(name: str) -> str:
    """The git tag a committed run gets."""
    return f"{_TAG_PREFIX}{name}"


def run_of(name_or_tag: str, where: str) -> str:
    """The run name in a run name or a run tag (``run-<run name>``), checked as :func:`check_run_name`."""
    return check_run_name(name_or_tag.removeprefix(_TAG_PREFIX), where)


def check_run_name(name: Any, where: str) -> str:
    """``name`` when it is a run name (``<YYYYmmdd-HHMMSS>-<label>``); else a ValueError naming ``where``.

    Run names become registry keys, branch and tag names: anything read back from storage (a champion
    record, a version listing) is checked before it reaches a path, an S3 key or a git command.
    """
    if not isinstance(name, str) or not _RUN_NAME.match(name):
        raise ValueError(f"{where}: {name!r} is not a run name (<YYYYmmdd-HHMMSS>-<letters, digits, _ or ->)")
    return name


def check_run_tag(tag: Any, where: str) -> str:
    """``tag`` when it is a run's git tag (``run-<run name>``); else a ValueError naming ``where``."""
    if not isinstance(tag, str) or not tag.startswith(_TAG_PREFIX) or not _RUN_NAME.match(tag[len(_TAG_PREFIX):]):
        raise ValueError(f"{where}: {tag!r} is not a run tag (run-<YYYYmmdd-HHMMSS>-<label>)")
    return tag
