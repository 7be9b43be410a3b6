"""A throwaway PostgreSQL server on 127.0.0.1 from Debian's postgresql package (installed by .ci/run).

PostgreSQL refuses to run as root, so when the tests run as root (CI, containers) the cluster belongs
to the ``postgres`` system user the package creates, and its commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from flows.server import free_port

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl (Debian keeps them out of PATH), or None when not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    """initdb + pg_ctl start in a fresh folder under the system temp dir (the ``postgres`` user must reach
    it, which pytest's private tmp_path does not allow); ``url`` is an asyncpg URL for Prefect. Stopping
    removes the cluster. A context manager."""

    def __init__(self, database: str = "prefect"):
        self.bin = postgres_bin()
        if self.bin is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.database, self.port = database, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tlops-pg-"))
        self.data = self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://tlops@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "tlops", "--auth=trust", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-w", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tlops", self.database)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
