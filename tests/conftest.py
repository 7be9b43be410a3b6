"""Shared test fixtures. Stage-specific fixtures live in the tests that use them (or tests/support/)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the moto S3 server fixture (`s3_endpoint`) for every test that asks for it
pytest_plugins = ["tests.support.s3server"]
os.environ.setdefault("TLOPS_NO_PROGRESS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def copy_project(dest: Path) -> Path:
    """Copy the project's files (tracked and untracked, not ignored) to ``dest`` as a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "test copy"], cwd=dest, check=True)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throwaway copy of the project (git + DVC initialised) to run stages and `dvc repro` in."""
    return copy_project(tmp_path / "project")
