"""A Prefect database with every migration applied, made once per test session, that test servers start from.

A Prefect server on a new SQLite database first runs all of Prefect's migrations: 10 s to answer here, against
3.5 s on a database already migrated (the server checks it is at the newest migration and starts; measured with
flows/server.py ``PrefectServer`` on the 2-core development machine, 9.4 s against 3.7 s of CPU with the script
that starts it). Seven test files start Prefect servers on SQLite, so they start from a copy of one migrated
database; each server has its own copy, so no file sees another's flow runs (the tests of one file share their
file's server). tests/test_flows_server_startup.py keeps a new database: a first start, migrations included, is
what it checks; tests/test_flows_engines.py runs on PostgreSQL.

The first worker process that needs the database makes it, under a file lock in the folder every worker of the
session shares (pytest's base temporary folder, the parent of each xdist worker's own); the others wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator
from unittest import mock

from flows.server import PrefectServer

__all__ = ["migrated_database", "seed_home", "harness_on_copy"]
DB_NAME = "prefect.db"  # what PREFECT_HOME's server uses (Prefect's default connection URL)
HARNESS_DB_NAME = "prefect-test.db"  # what prefect_test_harness names its database in its temporary folder


def migrated_database(shared: Path) -> Path:
    """The migrated database under ``shared``, made by a server started once (whoever comes first)."""
    template = shared / "prefect-migrated.db"
    with open(shared / "prefect-migrated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            home = Path(tempfile.mkdtemp(prefix="prefect-migrate-", dir=shared))
            with PrefectServer(home):
                pass
            # the write-ahead log into the file; mode=rw: a server that used another database leaves none here
            with contextlib.closing(sqlite3.connect(f"file:{home / DB_NAME}?mode=rw", uri=True)) as db:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if busy or not tables:
                raise RuntimeError(f"{home / DB_NAME}: no migrated Prefect database to copy (busy {busy}, "
                                   f"{tables} tables); see {home / 'server.log'}")
            shutil.copyfile(home / DB_NAME, template.with_suffix(".part"))
            os.replace(template.with_suffix(".part"), template)
            shutil.rmtree(home, ignore_errors=True)
    return template


def seed_home(home: Path, template: Path) -> Path:
    """A PREFECT_HOME whose server starts on a copy of ``template``; returns ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, home / DB_NAME)
    return home


@contextlib.contextmanager
def harness_on_copy(template: Path) -> Iterator[None]:
    """Prefect's own ``prefect_test_harness``, its temporary database a copy of ``template``.

    The harness makes its folder with ``mkdtemp`` and its database in it; the folder it gets here already holds
    the copy (``mkdtemp`` is replaced only while the harness starts). Should Prefect rename either, ``mock.patch``
    fails on the missing name, or the copy goes unused and the harness migrates a new database as before.
    """
    from prefect.testing.utilities import prefect_test_harness

    def folder_with_copy(*args, **kwargs) -> str:
        folder = tempfile.mkdtemp(*args, **kwargs)
        shutil.copyfile(template, Path(folder) / HARNESS_DB_NAME)
        return folder

    with contextlib.ExitStack() as stack:
        with mock.patch("prefect.testing.utilities.mkdtemp", folder_with_copy):
            stack.enter_context(prefect_test_harness())
        yield
