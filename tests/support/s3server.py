"""A real S3-compatible server on 127.0.0.1 for tests: moto's server mode, plus a throttling proxy.

``moto_server()`` (also used by bench/bench_ingest.py) starts ``moto_server -H 127.0.0.1 -p <free port>``
from this environment, waits until it answers, yields the endpoint URL and stops the server. One server
serves the whole session (each start costs seconds of imports); the ``s3_endpoint`` fixture (module scope)
empties it first (moto's reset API), so each module finds an empty store as from a fresh server, and puts
dummy credentials in the environment meanwhile.
``ThrottlingProxy`` sits in front of it and answers the first requests for each object with
503 SlowDown or 500, cuts bodies off, or slows requests, to prove that retries with backoff really happen
and that a cut-off transfer leaves nothing partial."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

from flows.server import free_port

__all__ = ["s3_endpoint", "moto_session", "moto_server", "S3_ENV", "make_client", "ThrottlingProxy"]
_ERRORS = {"throttle": (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
                             b"</Error>"),
           "error": (500, b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message>"
                          b"</Error>")}
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run ``moto_server -H 127.0.0.1 -p <free port>`` from this environment; yield its URL, then stop it."""
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_session() -> Iterator[str]:
    """The session's moto server (started on first use); tests ask for ``s3_endpoint``."""
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def s3_endpoint(moto_session: str) -> Iterator[str]:
    """The moto server, emptied for the module's tests (no bucket of another module is left), with dummy
    credentials in the environment meanwhile."""
    urllib.request.urlopen(urllib.request.Request(moto_session + "/moto-api/reset", method="POST"), timeout=30).close()
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    try:
        os.environ.update(S3_ENV)
        os.environ.pop("AWS_ENDPOINT_URL", None)
        yield moto_session
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_client(endpoint: str):
    """A boto3 S3 client for the test server (for setting up buckets and objects)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode} before answering on {url}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout:.0f}s")


class ThrottlingProxy:
    """HTTP proxy to ``upstream`` failing the first ``failures`` requests for each object (GETs, or the
    ``methods`` given): with 503 SlowDown (``fault="throttle"``), 500 InternalError (``"error"``), or by
    cutting the body off halfway and dropping the connection (``"cut"``); ``delay_s`` slows every
    request of those methods. ``heal()`` ends the faults (the store recovers).

    Use as a context manager; ``url`` is the endpoint to give clients, ``throttled`` counts faults per path.
    """

    def __init__(self, upstream: str, failures: int, fault: str = "throttle", methods: tuple[str, ...] = ("GET",),
                 delay_s: float = 0.0):
        self.upstream, self.failures, self.fault = urlparse(upstream), failures, fault
        self.methods, self.delay_s = methods, delay_s
        self.throttled: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()  # requests passed upstream, per method
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "ThrottlingProxy":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def heal(self) -> None:
        with self._lock:
            self.failures = 0

    def _should_throttle(self, method: str, path: str) -> bool:
        is_object_request = method in self.methods and "list-type" not in path and path.count("/") >= 2
        with self._lock:
            if is_object_request and self.throttled[path] < self.failures:
                self.throttled[path] += 1
                return True
        return False

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (S3 clients send it with uploads)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _forward(self) -> None:
                faulty = proxy._should_throttle(self.command, self.path)
                if self.command in proxy.methods and proxy.delay_s:
                    time.sleep(proxy.delay_s)
                if faulty and proxy.fault in _ERRORS:
                    status, body = _ERRORS[proxy.fault]
                    length = int(self.headers.get("Content-Length") or 0)
                    if length:
                        self.rfile.read(length)  # the client sent it; read it so the reply is not a reset
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.request(self.command, self.path, self.rfile.read(length) if length else None, dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                with proxy._lock:
                    proxy.forwarded[self.command] += 1
                self.send_response(response.status)
                skip = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
                for key, value in response.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if faulty:  # "cut": half the promised bytes, then the connection drops
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Handler
