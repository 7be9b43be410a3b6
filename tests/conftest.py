"""Shared test fixtures. Stage-specific fixtures live in the tests that use them (or tests/support/)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the moto S3 server fixture (`s3_endpoint`) for every test that asks for it
pytest_plugins = ["tests.support.s3server"]
os.environ.setdefault("TLOPS_NO_PROGRESS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # under `pytest -n N` each worker (and every stage, torchrun rank and server it starts) computes on one
    # thread: N workers of a machine's threads each would thrash the cores (set before torch or numpy loads)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    """Each test starts without the CLI's log handler (setup_logging() adds it once per process), so what a test
    logs does not depend on which tests ran before it; pytest's own capture handlers stay."""
    yield
    tlops = logging.getLogger("tlops")
    for handler in [h for h in tlops.handlers if type(h).__module__ == "pipeline.common.logs"]:
        tlops.removeHandler(handler)


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


@pytest.fixture(scope="session")
def _project_template(tmp_path_factory) -> Path:
    """One copy of the project for the session, never changed: ``project`` copies it (a copy of a folder is
    faster than listing, copying and committing the checkout's files for every test)."""
    return copy_project(tmp_path_factory.mktemp("template") / "project")


@pytest.fixture
def project(tmp_path: Path, _project_template: Path) -> Path:
    """A throwaway copy of the project (git + DVC initialised) to run stages and `dvc repro` in."""
    return Path(shutil.copytree(_project_template, tmp_path / "project", symlinks=True))


def pytest_collection_modifyitems(config, items) -> None:
    """Under `pytest -n N` (make test): the files of slow tests first, so that the longest files (a whole chain, a
    converged training) start early instead of keeping one worker busy alone at the end; Makefile passes
    --no-loadscope-reorder, which keeps this order. A run in one process keeps the files' own order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow: dict[Path, list[bool]] = {}
    for item in items:
        slow.setdefault(item.path, []).append(item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: (not all(slow[item.path]), -sum(slow[item.path])))  # stable within a file


def _forget_prefect_exit_hooks_in_child() -> None:
    """Drop Prefect's service exit hooks in a forked child, where they can only fail.

    A flow run in this process starts Prefect's queue services, which register `threading` exit hooks;
    after fork Prefect resets the services but leaves the hooks, and multiprocessing's child bootstrap
    runs them on exit, where `drain` asserts and the child exits 1 (every DataLoader fork worker of a
    later test would fail). The pipeline runs flows and training in separate processes, so only a test
    process that has both meets this.
    """
    import threading

    from prefect._internal.concurrency.services import _QueueServiceBase

    hooks = getattr(threading, "_threading_atexits", None)
    if hooks is not None:
        hooks[:] = [hook for hook in hooks  # each a functools.partial of the registered callable
                    if getattr(getattr(hook, "func", None), "__func__", None) is not _QueueServiceBase._at_exit]


def pytest_runtest_teardown(item) -> None:
    """Install the fork hook above once a test has imported Prefect (importing it here would slow every test)."""
    global _prefect_fork_hook
    if not _prefect_fork_hook and "prefect._internal.concurrency.services" in sys.modules:
        os.register_at_fork(after_in_child=_forget_prefect_exit_hooks_in_child)
        _prefect_fork_hook = True


_prefect_fork_hook = False


@pytest.fixture(scope="session")
def prefect_db(tmp_path_factory, worker_id: str) -> Path:
    """A migrated Prefect database to copy into a test server's home (tests/support/prefect_db.py): one for the
    session, shared by its xdist workers through the parent of their own temporary folders."""
    from tests.support.prefect_db import migrated_database

    base = tmp_path_factory.getbasetemp()
    return migrated_database(base if worker_id == "master" else base.parent)  # xdist's name for no worker
