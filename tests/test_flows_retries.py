"""The retrain flow's retry policy (transient failures retried with backoff, bad data never) and its failure
notification (the run.failed event POSTed to the webhook in TLOPS_EVENTS_WEBHOOK)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from prefect import flow, task

from flows.parameters import RetrainParameters
from flows.retrain import RETRY_POLICY, retrain, retrying, run_stage
from pipeline.common.errors import TransientError
from pipeline.config import ConfigError, OrchestrateParams
from pipeline.runs.notify import WEBHOOK_ENV, emit, failure_event
from pipeline.runs.workspace import StageFailed
from tests.support.prefect_db import harness_on_copy

pytestmark = pytest.mark.slow  # a Prefect test harness (its own API server) for the module


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_db):
    with harness_on_copy(prefect_db):
        yield


def _flaky(first_error: Exception):
    calls = []

    @task(**{**RETRY_POLICY, "retry_delay_seconds": 0})
    def stage() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise first_error
        return len(calls)

    @flow
    def one_stage() -> int:
        return stage()

    return one_stage, calls


def test_transient_failure_is_retried():
    run, calls = _flaky(TransientError("S3 said SlowDown"))
    assert run() == 2 and len(calls) == 2


def test_the_waits_before_retries_come_from_params_and_double():
    assert retrying(run_stage, OrchestrateParams(retry_backoff_s=0.5)).retry_delay_seconds == [0.5, 1.0, 2.0]
    assert retrying(run_stage, OrchestrateParams()).retry_delay_seconds == [5, 10, 20]  # params.yaml's default
    assert run_stage.retry_delay_seconds == [5, 10, 20]  # outside a run too


def test_a_retry_waits_what_the_params_say():
    calls: list[float] = []

    @task(**RETRY_POLICY)
    def stage() -> int:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TransientError("killed")
        return len(calls)

    @flow
    def one_stage() -> int:
        return retrying(stage, OrchestrateParams(retry_backoff_s=1.5))()

    assert one_stage() == 2
    assert 1.5 <= calls[1] - calls[0] < 5  # not the default 5 s


def test_bad_data_is_not_retried():
    run, calls = _flaky(StageFailed("validate failed (exit 2)"))
    with pytest.raises(StageFailed):
        run()
    assert len(calls) == 1


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failed_retrain_run_posts_to_the_failure_webhook(project, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{server.server_address[1]}/hook")
        monkeypatch.chdir(project)
        with pytest.raises(ConfigError):
            retrain(RetrainParameters(extra={"common.seed": -1}), reason="bad form value")
    finally:
        server.shutdown()
        server.server_close()
    [body] = _Webhook.received
    assert body["event"] == "run.failed" and body["flow"] == "retrain" and body["state"] == "Failed"
    assert "common.seed = -1" in body["message"] and body["text"].startswith("tlops: retrain run ")


def test_an_unreachable_webhook_never_raises(monkeypatch, caplog):
    monkeypatch.setenv(WEBHOOK_ENV, "http://127.0.0.1:9/closed")  # port 9 (discard): connection refused
    body = emit(*failure_event("retrain", "r1", "Crashed", "stage finetune was killed\nmore"))
    assert body["text"] == "tlops: retrain run r1 crashed: stage finetune was killed"
    assert "was not delivered" in caplog.text
