"""Review over time: each run's snapshot goes into an Evidently Workspace project; `evidently ui` serves it.

The Workspace is a folder (under reports/) that grows by one snapshot per drift run; DVC must keep it
between runs (``persist: true``). ``serve_ui`` is what ``tlops drift-ui`` / ``make drift-ui`` call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.common.logs import get_logger

__all__ = ["PROJECT_NAME", "add_snapshot", "start_ui", "wait_until_serving", "serve_ui"]
log = get_logger(__name__)

PROJECT_NAME = "tlops drift"
_DESCRIPTION = ("One snapshot per `tlops drift` run. The drift decision is the calibrated test in each "
                "snapshot's metadata (drift_detected, p_value); Evidently's own drift flags are context.")


def _project(workspace: Any, name: str) -> Any:
    """Return the project called ``name``, creating it (with its dashboard panels) on first use."""
    found = workspace.search_project(name)
    if found:
        return found[0]
    project = workspace.create_project(name, description=_DESCRIPTION)
    _add_panels(project)
    return project


def _add_panels(project: Any) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    dashboard = project.dashboard
    dashboard.add_panel(line_plot_panel("Share of drifted descriptors (Evidently, per column KS)",
                                        [PanelMetric(legend="share", metric="DriftedColumnsCount",
                                                     metric_labels={"value_type": "share"})]), tab="Drift")
    dashboard.add_panel(line_plot_panel("Accuracy on the current set",
                                        [PanelMetric(legend="accuracy", metric="Accuracy")]), tab="Drift")


def add_snapshot(workspace_dir: str | Path, snapshot: Any, project_name: str = PROJECT_NAME) -> dict[str, str]:
    """Add one run's snapshot to the Workspace project (both created when missing).

    Args:
        workspace_dir: the Workspace folder.
        snapshot: an evidently Snapshot (from pipeline.drift.evidently.build_snapshot).
        project_name: the project to add it to.
    Returns:
        ``{"workspace", "project_id", "snapshot_id"}`` as strings.
    """
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(workspace_dir))
    project = _project(workspace, project_name)
    before = set(workspace.list_runs(project.id))
    workspace.add_run(project.id, snapshot)
    added = [run for run in workspace.list_runs(project.id) if run not in before]
    return {"workspace": str(workspace_dir), "project_id": str(project.id),
            "snapshot_id": str(added[0]) if added else ""}


def _ui_command(workspace_dir: str | Path, host: str, port: int) -> list[str]:
    # The console script of this environment: the same evidently that wrote the Workspace.
    script = Path(sys.executable).with_name("evidently")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-c", "from evidently.cli import app; app()"]
    return [*launcher, "ui", "--workspace", str(workspace_dir), "--host", host, "--port", str(port)]


def start_ui(workspace_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
             log_file: str | Path | None = None) -> subprocess.Popen:
    """Start ``evidently ui`` on the Workspace in the background (caller stops it).

    Args:
        workspace_dir: the Workspace folder (must exist: run `tlops drift` first).
        host: interface to bind (127.0.0.1 keeps it local).
        port: TCP port.
        log_file: where the server's output goes (default: this process's stdout/stderr).
    Returns:
        The server process.
    """
    if not Path(workspace_dir).is_dir():
        raise FileNotFoundError(f"{workspace_dir}: no Evidently Workspace here (run `tlops drift` first)")
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 (handed to the child)
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    return subprocess.Popen(_ui_command(workspace_dir, host, port), stdout=out,
                            stderr=subprocess.STDOUT if out else None, env=env)


def wait_until_serving(url: str, process: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; raise if the process dies or the time runs out.

    Args:
        url: e.g. ``http://127.0.0.1:8000/api/projects``.
        process: the server, to fail fast when it exits.
        timeout: seconds to wait.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"evidently ui exited with code {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"evidently ui did not answer at {url} within {timeout:g} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_ui(workspace_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Serve the Workspace until interrupted (Ctrl-C); what ``tlops drift-ui`` runs.

    Args:
        workspace_dir: the Workspace folder.
        host: interface to bind.
        port: TCP port.
    Returns:
        The server's exit code (0 after Ctrl-C).
    """
    process = start_ui(workspace_dir, host, port)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop also stops the child
    try:
        wait_until_serving(f"http://{host}:{port}/api/projects", process)
        log.info("Evidently UI on http://%s:%d (workspace %s); Ctrl-C stops it", host, port, workspace_dir)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
