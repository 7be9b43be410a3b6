"""A run's events (pipeline/runs/notify.py) reach a local webhook receiver and apprise, with their payloads;
only the events params.yaml routes leave; inside a flow run each is a Prefect event too."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Iterator

import pytest

from pipeline.config import Params
from pipeline.runs.notify import (APPRISE_ENV, EVENTS, FAILURE_WEBHOOK_ENV, WEBHOOK_ENV, emit, failure_event,
                                  run_events)

# what a finished run's stage metrics hold (the keys the stages write)
METRICS = {
    "evaluate": {"verdict": "negative", "verdict_reason": "scratch beat transfer on all labels (p = 0.01)"},
    "drift": {"drift_detected": True, "p_value": 0.002, "descriptors_moved": ["brightness_mean"]},
    "promote": {"decision": "refused: per_class", "promoted": False, "version": "20260102-000000-b",
                "reason": "per_class: class '3': recall 0/40", "previous_champion": "20260101-000000-a",
                "test_accuracy": 0.91, "blessing": {"checks": [{"check": "per_class", "passed": False},
                                                               {"check": "gain", "passed": True}]}},
}


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", server.received
    finally:
        server.shutdown()
        server.server_close()


def _all_events() -> list[tuple[str, str, dict]]:
    return [failure_event("retrain", "r1", "Failed", "stage finetune failed\nits last lines", "http://ui/r1"),
            *run_events(METRICS, "r1", "http://ui/r1")]


def test_each_event_reaches_the_webhook_and_apprise_with_its_payload(receiver, monkeypatch):
    address, received = receiver
    monkeypatch.setenv(WEBHOOK_ENV, f"http://{address}/hook")
    monkeypatch.setenv(APPRISE_ENV, f"json://{address}/apprise")  # apprise's JSON POST to a URL
    monkeypatch.delenv(FAILURE_WEBHOOK_ENV, raising=False)
    events = _all_events()
    assert [e[0] for e in events] == ["run.failed", "verdict.negative", "drift.detected", "model.refused"]
    for event in events:
        emit(*event)
    hooks = {body["event"]: body for path, body in received if path == "/hook"}
    assert set(hooks) == {"run.failed", "verdict.negative", "drift.detected", "model.refused"}
    assert hooks["run.failed"]["text"] == "tlops: retrain run r1 failed: stage finetune failed (http://ui/r1)"
    assert hooks["run.failed"]["message"].endswith("its last lines")
    assert hooks["verdict.negative"]["reason"] == METRICS["evaluate"]["verdict_reason"]
    assert hooks["drift.detected"]["p_value"] == 0.002 and hooks["drift.detected"]["moved"] == ["brightness_mean"]
    refused = hooks["model.refused"]
    assert refused["decision"] == "refused: per_class" and refused["failed_checks"] == ["per_class"]
    assert refused["version"] == "20260102-000000-b" and refused["url"] == "http://ui/r1"
    apprised = [body for path, body in received if path == "/apprise"]
    assert len(apprised) == 4 and {b["title"] for b in apprised} == {f"tlops {e[0]}" for e in events}
    assert any("refused: per_class" in b["message"] for b in apprised)

    promoted = run_events({"promote": {"decision": "promoted", "promoted": True, "version": "v2", "reason": "gain"}},
                          "r2")
    assert [e[0] for e in promoted] == ["model.promoted"]
    received.clear()
    emit(*promoted[0])
    assert [b["event"] for p, b in received if p == "/hook"] == ["model.promoted"]


def test_only_routed_events_leave_and_the_failure_webhook_gets_failures_only(receiver, monkeypatch):
    address, received = receiver
    monkeypatch.setenv(WEBHOOK_ENV, f"http://{address}/hook")
    monkeypatch.setenv(FAILURE_WEBHOOK_ENV, f"http://{address}/failures")
    monkeypatch.delenv(APPRISE_ENV, raising=False)
    routed = Params.model_validate({"orchestrate": {"events": ["run.failed", "model.promoted"]}}).orchestrate.events
    for event in _all_events():
        emit(*event, routed=routed)
    assert [(p, b["event"]) for p, b in received] in ([("/hook", "run.failed"), ("/failures", "run.failed")],
                                                      [("/failures", "run.failed"), ("/hook", "run.failed")])
    with pytest.raises(ValueError, match="not one of"):
        emit("model.deleted", "x", {})
    with pytest.raises(ValueError, match="events"):
        Params.model_validate({"orchestrate": {"events": ["everything"]}})
    assert set(Params().orchestrate.events) == set(EVENTS)


@pytest.mark.slow
def test_inside_a_flow_run_each_event_is_a_prefect_event(monkeypatch, prefect_db):
    from prefect import flow, get_client
    from prefect.events.worker import EventsWorker

    from tests.support.prefect_db import harness_on_copy

    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    monkeypatch.delenv(APPRISE_ENV, raising=False)

    @flow(name="events-check")
    def announce() -> None:
        for event in _all_events():
            emit(*event)

    with harness_on_copy(prefect_db):
        announce()
        EventsWorker.drain_all()
        with get_client(sync_client=True) as api:
            found: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(found) < 4:
                response = api.request("POST", "/events/filter",
                                       json={"filter": {"event": {"prefix": ["tlops."]}}, "limit": 50})
                found = [e["event"] for e in response.json()["events"]]
                time.sleep(0.5)
    assert sorted(found) == sorted(f"tlops.{e}" for e in ("run.failed", "verdict.negative", "drift.detected",
                                                          "model.refused"))


def test_an_unknown_apprise_url_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    monkeypatch.setenv(APPRISE_ENV, "notascheme://nowhere")
    emit(*failure_event("retrain", "r1", "Failed", "boom"))
    assert APPRISE_ENV in caplog.text
