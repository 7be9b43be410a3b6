"""Local servers on loopback for `make ui` and the end-to-end tests: a Prefect server process (SQLite, or
PostgreSQL given a database URL; closed by HTTP basic auth when given an auth string) and a web server for
the runs' HTML reports (``<run>/reports/<file>`` only)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import math
import os
import posixpath
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

__all__ = ["PrefectServer", "ReportServer", "free_port", "report_path", "AUTH_FILE", "SERVER_AUTH_ENV",
           "CLIENT_AUTH_ENV", "server_auth_string", "client_auth_string", "temporary_server", "ServerStartFailed"]
# Prefect 3.8.8's basic auth: the server compares the decoded Authorization header with
# PREFECT_SERVER_API_AUTH_STRING (every API route but GET /api/health and /api/ready); clients and
# workers send PREFECT_API_AUTH_STRING. Both are "user:password".
SERVER_AUTH_ENV, CLIENT_AUTH_ENV = "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"
AUTH_FILE = "auth-string"  # under the server's PREFECT_HOME (.prefect/, gitignored): `make ui`'s generated secret


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path}: holds the Prefect server's password but has mode {mode:o}; "
                              f"run `chmod 600 {path}`")


def server_auth_string(home: Path) -> tuple[str, str]:
    """The basic-auth string ("user:password") a local server is started with, and where it came from.

    PREFECT_SERVER_API_AUTH_STRING when set; else ``<home>/auth-string``, created on first use with a random
    password and mode 0600, so a restarted server keeps the password the browser logged in with.
    """
    if os.environ.get(SERVER_AUTH_ENV):
        return os.environ[SERVER_AUTH_ENV], f"${SERVER_AUTH_ENV}"
    path = Path(home) / AUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: never overwrite a password already handed out; 0600 from the start, no window
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _check_private(path)
        value = path.read_text().strip()
        if ":" not in value:
            raise ValueError(f"{path}: expected one line user:password, found {len(value)} characters without ':'; "
                             "delete the file to get a new one") from None
        return value, str(path)
    with os.fdopen(fd, "w") as out:
        out.write(f"tlops:{secrets.token_urlsafe(24)}\n")
    return path.read_text().strip(), str(path)


def client_auth_string(home: Path) -> str | None:
    """What a client (`make deploy`, `make worker`) sends: PREFECT_API_AUTH_STRING, else the local server's file."""
    if os.environ.get(CLIENT_AUTH_ENV):
        return os.environ[CLIENT_AUTH_ENV]
    path = Path(home) / AUTH_FILE
    if not path.is_file():
        return None
    _check_private(path)
    return path.read_text().strip()


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME; a context manager.

    With ``auth_string`` ("user:password") every API call but the health check needs it (HTTP basic auth);
    :meth:`env` hands it to the clients. Without it the server is open to whoever reaches the port.
    """

    def __init__(self, home: Path, port: int | None = None, log_path: Path | None = None,
                 database_url: str | None = None, auth_string: str | None = None):
        self.home, self.port = Path(home), port or free_port()
        self.log_path = log_path or self.home / "server.log"
        self.database_url = database_url  # None: SQLite under home
        if auth_string is not None and ":" not in auth_string:
            raise ValueError("the Prefect server's auth string must be user:password (it has no ':')")
        self.auth_string = auth_string
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for processes that talk to this server (its credentials included, when it has them)."""
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        env.pop(SERVER_AUTH_ENV, None)  # a client has no business with the server's own setting
        if self.auth_string:
            env[CLIENT_AUTH_ENV] = self.auth_string
        return env

    def start(self, timeout: float = 120) -> "PrefectServer":
        """Start the server and wait until /api/health answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the server process's log)
        prefect = Path(sys.executable).with_name("prefect")
        env = self.env()
        if self.database_url:  # only the server needs it; clients talk to the API
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        if self.auth_string:
            env[SERVER_AUTH_ENV] = self.auth_string
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
        raise TimeoutError(f"prefect server did not answer on {self.api_url} within {timeout:.0f}s; "
                           f"see {self.log_path}")

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


class ServerStartFailed(RuntimeError):
    """Prefect's temporary server did not start within ``orchestrate.server_startup_s``; says what to do."""


@contextlib.contextmanager
def temporary_server(limit_s: float) -> Iterator[str | None]:
    """Prefect's temporary server for a run started without one (`make run`), given ``limit_s`` seconds to start.

    Prefect starts this server itself the first time a flow needs its API and no PREFECT_API_URL is set, with
    its own limit of 20 s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): its first start creates the
    database (12 s here on a quiet machine), and a busy machine took longer and failed the whole run. Here it
    is started before the flow, with the limit set for the block (Prefect's settings are read when prefect is
    imported, so the environment variable set later would be ignored; ``temporary_settings`` is its way), and
    the flow then uses the running server. Prefect's own server rather than one this process would start and
    own (:class:`PrefectServer`): `prefect server start` also builds and serves the dashboard and runs the
    background services, more work on a machine already busy, and would repeat the port choice and the
    shutdown Prefect does for its temporary server (it stops with this process).

    Args:
        limit_s: ``orchestrate.server_startup_s``.
    Yields:
        The API URL in use: the temporary server's, PREFECT_API_URL's (a server already there: nothing is
        started), or None where Prefect may not start one (the flow then fails with Prefect's message).
    Raises:
        ServerStartFailed: not answering within ``limit_s``, or the server process ended; names the param and
            the two ways out.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield PREFECT_API_URL.value() or None
        return
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: math.ceil(limit_s)}):
        server = SubprocessASGIServer()  # the instance Prefect's clients use (one per process)
        started = time.monotonic()
        try:
            server.start(timeout=limit_s)
        except Exception as err:  # noqa: BLE001 (a timeout is a RuntimeError, a bad health answer httpx's)
            exited = server.server_process is not None and server.server_process.poll() is not None
            server.stop()  # Prefect leaves it running after a timeout
            cause = (f"its process exited with {server.server_process.returncode} (its error is above)" if exited
                     else f"it did not answer within {limit_s:g} s (orchestrate.server_startup_s)")
            raise ServerStartFailed(
                f"Prefect's temporary server did not start: {cause}, after {time.monotonic() - started:.1f} s. "
                "On a busy machine raise orchestrate.server_startup_s in params.yaml; or start a server that stays "
                "up (`prefect server start` in another terminal, after `source .venv/bin/activate`) and run "
                "`make run PREFECT_API_URL=http://127.0.0.1:4200/api` "
                f"(Prefect said: {str(err).strip()[:300] or type(err).__name__})") from None
        yield server.api_url


def report_path(url_path: str) -> bool:
    """Whether a URL path names a file under a run's reports: ``/<run>/reports/<file...>``, no dotfile.

    The rule of infra/compose/nginx.conf: a run's worktree also holds its data, models and DVC/git
    settings, and none of that is served.
    """
    path = unquote(urlsplit(url_path).path)
    parts = posixpath.normpath(path).split("/")[1:] if path.startswith("/") else []
    return (len(parts) >= 3 and parts[1] == "reports" and not path.endswith("/")
            and not any(part.startswith(".") or part == "" for part in parts))


class _ReportsHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        if not report_path(self.path) or not os.path.isfile(self.translate_path(self.path)):
            self.send_error(404)  # a listing, a dotfile or anything outside <run>/reports/
            return None
        return super().send_head()

    def log_message(self, format, *args) -> None:  # one line per request would drown the dashboard's output
        pass


class ReportServer:
    """Serves the runs' reports (``<root>/<run>/reports/``) read-only over http on 127.0.0.1, from a thread."""

    def __init__(self, root: Path, port: int = 0):
        self.root, self.port = Path(root), port
        self.httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ReportServer":
        self.root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_ReportsHandler, directory=str(self.root))
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
