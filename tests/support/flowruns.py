"""Driving deployments over the Prefect API the way the dashboard does, for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import httpx

__all__ = ["prefect_api", "wait_for", "start", "finish", "artifacts", "stop_service"]

# What Prefect's own client retries (prefect/client/base.py): a server on SQLite answers 503 when a write finds
# the database locked (prefect/server/api/server.py, is_client_retryable_exception), which happens under the
# whole suite on two cores; the dashboard and workers retry it, so the tests' API client does too.
_RETRIED_STATUSES = frozenset({429, 502, 503})
_ATTEMPTS = 8


class _RetryingTransport(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, _ATTEMPTS):
            response = super().handle_request(request)
            if response.status_code not in _RETRIED_STATUSES:
                return response
            response.close()
            time.sleep(min(2 ** attempt * 0.25, 8))
        return super().handle_request(request)  # the last attempt's answer, whatever it is


def prefect_api(api_url: str, auth: tuple[str, str] | None = None) -> httpx.Client:
    """A client of a test's Prefect server REST API that retries what Prefect's clients retry."""
    return httpx.Client(base_url=api_url, timeout=30, auth=auth, transport=_RetryingTransport())


def wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise TimeoutError(message)


def start(api: httpx.Client, flow: str, deployment: str, parameters: dict) -> str:
    """What the dashboard's Run button does: create a flow run of the deployment with parameters."""
    dep = api.get(f"/deployments/name/{flow}/{deployment}").raise_for_status().json()
    run = api.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})
    return run.raise_for_status().json()["id"]


def finish(api: httpx.Client, run_id: str, timeout: float = 900) -> dict:
    def done() -> bool:
        return (api.get(f"/flow_runs/{run_id}").json()["state"]["type"]
                in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

    wait_for(done, timeout, f"flow run {run_id} did not finish in {timeout}s")
    run = api.get(f"/flow_runs/{run_id}").json()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    return run


def artifacts(api: httpx.Client, run_id: str) -> list[dict]:
    return api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()


def stop_service(service: subprocess.Popen, grace: float = 20) -> None:
    """Stop a Prefect worker or `flows.deploy` serving process started in a session of its own, as Kubernetes or
    Docker stop a container: SIGTERM to it alone (it stops polling and waits for its flow-run processes), then,
    after ``grace`` seconds or as soon as it has exited, SIGKILL to whatever is left of its process group, so
    nothing outlives the test.

    The grace is not a check: under the whole suite Prefect 3's process worker sometimes outlived its SIGTERM
    by minutes, its flow runs long finished (its log: "Received SIGTERM", then nothing until the test's server
    stopped, then its cancellation observer's polling errors); a container runtime ends that with a SIGKILL
    after its grace period, as this does.
    """
    service.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # else the service and its processes are all gone
        os.killpg(service.pid, signal.SIGKILL)
    service.wait()
