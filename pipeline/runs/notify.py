"""A failed unattended run tells someone: a JSON POST to the webhook in ``TLOPS_FAILURE_WEBHOOK``.

The body carries ``text`` (what Slack, Mattermost and Teams incoming webhooks display) and the fields
a program wants (flow, run, state, message, url). The URL is a secret (a Slack webhook URL is a
credential), so it comes from the environment, never from params.yaml. A notification that cannot be
delivered is logged and never fails the run a second time.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from pipeline.common.logs import get_logger

__all__ = ["WEBHOOK_ENV", "notify_failure"]
log = get_logger(__name__)
WEBHOOK_ENV = "TLOPS_FAILURE_WEBHOOK"
_TIMEOUT_S = 10.0


def notify_failure(flow: str, run: str, state: str, message: str, url: str | None = None) -> dict[str, Any] | None:
    """POST a failure message to the webhook; return the body sent, or None when no webhook is set.

    Args:
        flow: the flow's name (retrain, drift-check).
        run: the flow run's name.
        state: its final state (Failed, Crashed, TimedOut).
        message: the state's message (the failing stage and its last lines).
        url: the flow run's page in the dashboard, when known.
    """
    webhook = os.environ.get(WEBHOOK_ENV)
    if not webhook:
        return None
    first_line = (message or "no message").strip().splitlines()[0][:300]
    body = {"text": f"tlops: {flow} run {run} {state.lower()}: {first_line}" + (f" ({url})" if url else ""),
            "flow": flow, "run": run, "state": state, "message": (message or "")[-2000:], "url": url}
    try:
        httpx.post(webhook, json=body, timeout=_TIMEOUT_S).raise_for_status()
    except httpx.HTTPError as err:
        log.warning("the failure notification to %s was not delivered: %s", WEBHOOK_ENV, err)
    return body
