"""What a run found reaches people: its events, routed to Prefect and to webhooks / apprise.

Events (``EVENTS``): ``run.failed``, ``drift.detected``, ``model.promoted``, ``model.refused`` (any
decision but a promotion: refused, kept champion, insufficient evidence), ``verdict.negative``. Each is

- a Prefect event ``tlops.<event>`` on the resource ``tlops.run.<run>`` (when a Prefect run is active),
  which a team routes with Automations in the dashboard;
- a JSON POST to the webhook in ``TLOPS_EVENTS_WEBHOOK`` and a message to each apprise URL in
  ``TLOPS_APPRISE_URLS`` (space-separated: Slack, Teams, mail, ... as apprise spells them), for the
  events ``orchestrate.events`` in params.yaml lists. ``TLOPS_FAILURE_WEBHOOK`` still gets ``run.failed``.

The body carries ``text`` (what Slack, Mattermost and Teams incoming webhooks display), ``event`` and
the fields a program wants. URLs are secrets (a Slack webhook URL is a credential), so they come from the
environment, never from params.yaml. An event that cannot be delivered is logged and never fails the
run.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, get_args

import httpx

from pipeline.common.logs import get_logger
from pipeline.config import EventName

__all__ = ["EVENTS", "WEBHOOK_ENV", "FAILURE_WEBHOOK_ENV", "APPRISE_ENV", "emit", "failure_event", "run_events"]
log = get_logger(__name__)
EVENTS = get_args(EventName)
WEBHOOK_ENV = "TLOPS_EVENTS_WEBHOOK"
FAILURE_WEBHOOK_ENV = "TLOPS_FAILURE_WEBHOOK"  # the failure-only webhook of earlier versions
APPRISE_ENV = "TLOPS_APPRISE_URLS"
_TIMEOUT_S = 10.0


def emit(event: str, text: str, fields: dict[str, Any], routed: Sequence[str] = EVENTS) -> dict[str, Any]:
    """Send one event everywhere it is configured to go; returns the body.

    Args:
        event: one of ``EVENTS``.
        text: the one line people read (prefixed with ``tlops:``).
        fields: what a program reads (run, flow, url, decision, ...).
        routed: the events that leave for webhooks and apprise (``orchestrate.events``).
    """
    if event not in EVENTS:
        raise ValueError(f"event {event!r}: not one of {', '.join(EVENTS)}")
    body = {"event": event, "text": f"tlops: {text}", **fields}
    _prefect_event(event, body)
    if event in routed:
        targets = [os.environ.get(WEBHOOK_ENV)]
        if event == "run.failed":
            targets.append(os.environ.get(FAILURE_WEBHOOK_ENV))
        for url in dict.fromkeys(t for t in targets if t):
            _post(url, body)
        _apprise(event, body)
    return body


def failure_event(flow: str, run: str, state: str, message: str, url: str | None = None) -> tuple[str, str, dict]:
    """The ``run.failed`` event of a failed, crashed or timed-out flow run: (event, text, fields)."""
    first_line = (message or "no message").strip().splitlines()[0][:300]
    text = f"{flow} run {run} {state.lower()}: {first_line}" + (f" ({url})" if url else "")
    return "run.failed", text, {"flow": flow, "run": run, "state": state, "message": (message or "")[-2000:],
                                "url": url}


def run_events(metrics: dict[str, dict[str, Any]], run: str, url: str | None = None) -> list[tuple[str, str, dict]]:
    """The events a finished run's stage metrics hold (pipeline.runs.summary.stage_metrics): (event, text, fields).

    Args:
        metrics: stage -> its metrics (``evaluate``, ``drift``, ``promote`` are read when present).
        run: the run's name.
        url: its page in the dashboard, when known.
    """
    found = []
    evaluate, drift, promote = metrics.get("evaluate", {}), metrics.get("drift", {}), metrics.get("promote", {})
    if evaluate.get("verdict") == "negative":
        found.append(("verdict.negative", f"run {run}: transfer did worse than the scratch baseline "
                                          f"({evaluate.get('verdict_reason', 'see the evaluation report')})",
                      {"run": run, "url": url, "verdict": "negative", "reason": evaluate.get("verdict_reason")}))
    if drift.get("drift_detected") is True:
        found.append(("drift.detected", f"run {run}: drift detected (p = {drift.get('p_value')})",
                      {"run": run, "url": url, "p_value": drift.get("p_value"),
                       "moved": drift.get("descriptors_moved")}))
    if "decision" in promote:
        promoted = promote.get("promoted") is True
        checks = [c["check"] for c in (promote.get("blessing") or {}).get("checks", []) if not c["passed"]]
        found.append(("model.promoted" if promoted else "model.refused",
                      f"run {run}: {promote['decision']} ({promote.get('reason', '')})"[:500],
                      {"run": run, "url": url, "decision": promote["decision"], "reason": promote.get("reason"),
                       "version": promote.get("version"), "previous_champion": promote.get("previous_champion"),
                       "test_accuracy": promote.get("test_accuracy"), "failed_checks": checks}))
    return found


def _prefect_event(event: str, body: dict[str, Any]) -> None:
    """A Prefect event for Automations, inside a Prefect run only (no server to send it to otherwise)."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    try:
        from prefect.events import emit_event

        run = str(body.get("run") or "unknown")
        emit_event(event=f"tlops.{event}", resource={"prefect.resource.id": f"tlops.run.{run}",
                                                     "prefect.resource.name": run}, payload=body)
    except Exception as err:  # noqa: BLE001 (an event never fails the run)
        log.warning("the Prefect event tlops.%s was not emitted: %s", event, err)


def _post(url: str, body: dict[str, Any]) -> None:
    try:
        httpx.post(url, json=body, timeout=_TIMEOUT_S).raise_for_status()
    except httpx.HTTPError as err:
        log.warning("the %s event to the webhook was not delivered: %s", body["event"], err)


def _apprise(event: str, body: dict[str, Any]) -> None:
    urls = os.environ.get(APPRISE_ENV, "").split()
    if not urls:
        return
    import apprise

    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(url):
            log.warning("%s: an entry is not a URL apprise knows; skipped", APPRISE_ENV)
    if not sender.notify(title=f"tlops {event}", body=body["text"]):
        log.warning("the %s event did not reach every apprise URL in %s", event, APPRISE_ENV)
