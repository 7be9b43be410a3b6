"""Local servers on loopback for `make ui` and the end-to-end tests: a Prefect server process (SQLite, or
PostgreSQL given a database URL) and a web server for the runs' HTML reports."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

__all__ = ["PrefectServer", "ReportServer", "free_port"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME; a context manager."""

    def __init__(self, home: Path, port: int | None = None, log_path: Path | None = None,
                 database_url: str | None = None):
        self.home, self.port = Path(home), port or free_port()
        self.log_path = log_path or self.home / "server.log"
        self.database_url = database_url  # None: SQLite under home
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for processes that talk to this server."""
        return {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

    def start(self, timeout: float = 120) -> "PrefectServer":
        """Start the server and wait until /api/health answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        prefect = Path(sys.executable).with_name("prefect")
        env = self.env()
        if self.database_url:  # only the server needs it; clients talk to the API
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        self.process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                                         str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_healthy(timeout)
        except BaseException:  # a timeout, or this process told to stop meanwhile: never leave it running
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"prefect server did not answer on {self.api_url} within {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        """Stop the server and everything it started."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # one line per request would drown the dashboard's output
        pass


class ReportServer:
    """Serves a folder (the runs' worktrees) read-only over http on 127.0.0.1, from a thread."""

    def __init__(self, root: Path, port: int = 0):
        self.root, self.port = Path(root), port
        self.httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ReportServer":
        self.root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self) -> "ReportServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
