"""`make run`'s Prefect temporary server (flows/server.py: temporary_server): started for real with the limit of
``orchestrate.server_startup_s``, which reaches Prefect's own setting; one that cannot start in time ends the
run before anything ran, with one message naming the param and the ways out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    """A Prefect of its own (no server configured, so the temporary one is used) for the child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PYTHONPATH": str(ROOT)}


def test_a_server_that_does_not_start_in_time_ends_make_run_with_what_to_do(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["orchestrate"]["server_startup_s"] = 0.2  # Prefect's server takes seconds to import, let alone start
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "dvc.yaml").write_text("stages: {}\n")
    out = subprocess.run([sys.executable, "-m", "flows.retrain"], cwd=project, env=_env(tmp_path / "prefect"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("make run: Prefect's temporary server did not start: it did not answer within 0.2 s "
                           "(orchestrate.server_startup_s)")
    assert "raise orchestrate.server_startup_s in params.yaml" in last
    assert "`make run PREFECT_API_URL=http://127.0.0.1:4200/api`" in last
    assert "Traceback" not in out.stderr and not (project / "runs").exists()  # no run was started


def test_the_limit_reaches_prefect_and_the_flow_uses_the_server_started(tmp_path):
    code = textwrap.dedent("""
        import json
        from prefect.client.orchestration import get_client
        from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as LIMIT,
                                      temporary_settings)
        from flows.server import temporary_server

        seen = {"default": LIMIT.value()}
        with temporary_server(90.5) as url:
            with get_client(sync_client=True) as client:  # what a flow's client gets: the server started
                seen.update(limit=LIMIT.value(), url=url, client=str(client.api_url), health=client.api_healthcheck())
        seen["after"] = LIMIT.value()
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            with temporary_server(90) as url:  # a server already configured: nothing started
                seen["configured"] = url
        print(json.dumps(seen))
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path / "prefect"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["default"] == 20 and seen["limit"] == 91 and seen["after"] == 20
    assert seen["url"].startswith("http://127.0.0.1:") and seen["client"].rstrip("/") == seen["url"]
    assert seen["health"] is None  # api_healthcheck returns None when the server answers
    assert seen["configured"] == "http://127.0.0.1:9/api"
