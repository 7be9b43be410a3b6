"""A local Prefect server process on loopback (SQLite): for `make ui` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["PrefectServer", "free_port"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME; a context manager."""

    def __init__(self, home: Path, port: int | None = None, log_path: Path | None = None):
        self.home, self.port = Path(home), port or free_port()
        self.log_path = log_path or self.home / "server.log"
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
        self.process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                                         str(self.port)], env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
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
