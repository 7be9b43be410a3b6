"""Driving deployments over the Prefect API the way the dashboard does, for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import httpx

__all__ = ["wait_for", "start", "finish", "artifacts", "stop_service"]


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
    for _ in range(10):  # a freshly started SQLite server can answer 503 while it is busy migrating/serving
        run = api.post(f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})
        if run.status_code != 503:
            break
        time.sleep(3)
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
