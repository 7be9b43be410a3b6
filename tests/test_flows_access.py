"""Who gets in where, on real servers on 127.0.0.1 (issue 22):

- a Prefect server started with a basic-auth string answers 401 to API calls without it, and a worker
  given PREFECT_API_AUTH_STRING (`python -m flows.deploy --worker`, after `--register`) still picks up
  and finishes a flow run;
- the compose stack's nginx.conf, run by a real nginx, and `make ui`'s report server serve a run's
  reports and nothing else of its worktree (data, models, .dvc, .git, dotfiles, listings);
- report links and link artifacts never carry the pipeline's S3 credentials (temporary ones included).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect import flow
from prefect.artifacts import create_link_artifact
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from flows.retrain import publish
from flows.server import AUTH_FILE, PrefectServer, ReportServer, client_auth_string, free_port, server_auth_string
from pipeline.config import OrchestrateParams
from pipeline.runs.publish import publish_reports
from tests.support.flowruns import artifacts, finish, prefect_api, start, stop_service, wait_for
from tests.support.prefect_db import seed_home
from tests.support.s3server import make_client

ROOT = Path(__file__).resolve().parents[1]
NGINX = Path("/usr/sbin/nginx")
AUTH = f"tlops:{secrets.token_urlsafe(18)}"  # made up at each run: found nowhere else
RUN = "2026-12-05-1200-brave-otter"


@pytest.fixture(scope="module")
def server(tmp_path_factory, prefect_db):
    """A Prefect server on SQLite, closed by AUTH."""
    with PrefectServer(seed_home(tmp_path_factory.mktemp("prefect"), prefect_db), auth_string=AUTH) as started:
        yield started


# ---------------------------------------------------------------- Prefect basic auth

@pytest.mark.slow
def test_api_refuses_calls_without_the_auth_string(server):
    user, password = AUTH.split(":", 1)
    for auth in (None, (user, "wrong"), ("admin", password)):
        with prefect_api(server.api_url, auth) as api:
            assert api.post("/flows/filter", json={}).status_code == 401, auth
            assert api.get("/deployments/name/x/y").status_code == 401, auth
    with prefect_api(server.api_url, (user, password)) as api:
        assert api.post("/flows/filter", json={}).status_code == 200
    # Prefect 3.8.8 leaves GET /api/health open (probes); it says nothing but "true"
    assert httpx.get(f"{server.api_url}/health", timeout=30).json() is True
    # the dashboard is a static page that holds no data: it asks for the string (ui-settings says BASIC)
    # and sends it with every API call, which the checks above close
    page = httpx.get(server.ui_url, timeout=30, follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()
    settings = httpx.get(f"{server.ui_url}/ui-settings", timeout=30, follow_redirects=True).json()
    assert settings["auth"] == "BASIC"


@pytest.mark.slow
def test_worker_with_the_auth_string_runs_a_flow(server, tmp_path):
    env = {**server.env(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    assert env["PREFECT_API_AUTH_STRING"] == AUTH and "PREFECT_SERVER_API_AUTH_STRING" not in env
    # `make deploy`: the work pool, the limit and the project's deployments, through the closed API
    registered = subprocess.run([sys.executable, "-m", "flows.deploy", "--register"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=180)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    with prefect_api(server.api_url, tuple(AUTH.split(":", 1))) as api:
        # the project's deployments have schedules that would run the pipeline in this checkout: gone again
        project = api.post("/deployments/filter", json={}).raise_for_status().json()
        assert {d["name"] for d in project} == {"retrain-scheduled", "retrain-on-demand", "drift-check"}
        # a custom run from the dashboard cannot choose what the worker runs, with what environment, where
        assert "a custom run may set only labels, name, stream_output" in registered.stdout
        on_demand = next(d for d in project if d["name"] == "retrain-on-demand")
        for job_variables in ({"command": "sh -c id"}, {"env": {"AWS_ENDPOINT_URL": "http://127.0.0.2:1"}},
                              {"working_dir": "/tmp"}):
            refused = api.post(f"/deployments/{on_demand['id']}/create_flow_run",
                               json={"job_variables": job_variables})
            assert refused.status_code == 422, (job_variables, refused.text)
        for deployment in project:
            api.delete(f"/deployments/{deployment['id']}").raise_for_status()
        flow_id = api.post("/flows/", json={"name": "access-hello"}).raise_for_status().json()["id"]
        api.post("/deployments/", json={
            "name": "hello", "flow_id": flow_id, "work_pool_name": "tlops", "path": str(ROOT),
            "entrypoint": "tests/support/hello_flow.py:hello", "job_variables": {"working_dir": str(ROOT)},
        }).raise_for_status()
        run_id = start(api, "access-hello", "hello", {"name": "worker"})

        def said_hello() -> bool:  # the run's process ships its log lines as it exits
            logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).raise_for_status()
            return any(row["message"] == "hello worker" for row in logs.json())

        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (the worker process's log)
        worker = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--worker"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            run = finish(api, run_id, timeout=120)
            wait_for(said_hello, 30, f"the flow run's log lacks its greeting; see {tmp_path / 'worker.log'}")
        finally:
            stop_service(worker)
        assert run["work_pool_name"] == "tlops"
        workers = api.post("/work_pools/tlops/workers/filter", json={}).raise_for_status().json()
        assert workers, (tmp_path / "worker.log").read_text()[-3000:]


def test_make_ui_auth_string_is_generated_once_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    home = tmp_path / ".prefect"
    assert client_auth_string(home) is None  # nothing yet: the client sends nothing
    value, where = server_auth_string(home)
    path = home / AUTH_FILE
    assert where == str(path) and re.fullmatch(r"tlops:[\w-]{32}", value)
    assert path.stat().st_mode & 0o777 == 0o600
    assert server_auth_string(home) == (value, where)  # a restart keeps the password the browser knows
    assert client_auth_string(home) == value  # what `make deploy` / `make worker` send to that server
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "ops:elsewhere")
    assert client_auth_string(home) == "ops:elsewhere"  # the environment wins (a server elsewhere)
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "ops:chosen")
    assert server_auth_string(home) == ("ops:chosen", "$PREFECT_SERVER_API_AUTH_STRING")
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING")
    path.chmod(0o644)
    with pytest.raises(PermissionError, match=re.escape(f"{path}: holds the Prefect server's password")):
        server_auth_string(home)


# ---------------------------------------------------------------- the reports web servers

def _runs_tree(root: Path) -> Path:
    """A run worktree as a retrain run leaves it: reports beside data, models and DVC/git settings."""
    run = root / RUN
    files = {
        "reports/evaluate/report.html": "<html><body>verdict: gain</body></html>",
        "reports/validate/.gx/index.html": "<html>Data Docs internals</html>",
        "reports/.secret": "not for browsers",
        "data/dataset/train/shard-000000.tar": "images",
        "models/finetuned/model.pt": "weights",
        ".dvc/config.local": "['remote \"store\"']\n    access_key_id = AKIAEXAMPLE\n",
        ".git": "gitdir: /project/.git/worktrees/run\n",
        "params.yaml": "common: {}\n",
    }
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    return run


# what nobody may fetch: data, models, settings, dotfiles, listings, and the same through ../ and %2e
REFUSED = [f"/{RUN}/data/dataset/train/shard-000000.tar", f"/{RUN}/models/finetuned/model.pt",
           f"/{RUN}/.dvc/config.local", f"/{RUN}/.git", f"/{RUN}/params.yaml", "/", f"/{RUN}/", f"/{RUN}/reports/",
           f"/{RUN}/reports/evaluate/", f"/{RUN}/reports/evaluate", f"/{RUN}/reports/.secret",
           f"/{RUN}/reports/validate/.gx/index.html", f"/{RUN}/reports/../models/finetuned/model.pt",
           f"/{RUN}/reports/%2e%2e/.dvc/config.local", f"/{RUN}/reports/%2Esecret"]


def _wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nginx did not listen on 127.0.0.1:{port} within 30s: {log.read_text()[-2000:]}")


@pytest.fixture
def nginx(tmp_path):
    """infra/compose/nginx.conf under a real nginx: its server block as the compose stack mounts it, with
    only the listen address and the root moved into the test's folder. Yields (base URL, runs root)."""
    if not NGINX.is_file():
        pytest.skip(f"{NGINX} is not installed (.ci/run installs Debian's nginx package)")
    runs, port = tmp_path / "runs", free_port()
    runs.mkdir()
    server = (ROOT / "infra" / "compose" / "nginx.conf").read_text()
    for old, new in (("listen 8080;", f"listen 127.0.0.1:{port};"), ("root /project/runs;", f"root {runs};")):
        assert server.count(old) == 1, f"infra/compose/nginx.conf: expected one {old!r}"
        server = server.replace(old, new)
    (tmp_path / "server.conf").write_text(server)
    for folder in ("logs", "temp"):
        (tmp_path / folder).mkdir()
    temp = " ".join(f"{kind}_temp_path {tmp_path / 'temp' / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                 "uwsgi", "scgi"))
    mime = Path("/etc/nginx/mime.types")
    types = f"include {mime};" if mime.is_file() else "types { text/html html; image/png png; }"
    (tmp_path / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # as root, nginx would otherwise switch to nobody
        + f"worker_processes 1;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'logs' / 'error.log'};\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{ {types} access_log off; {temp} include {tmp_path / 'server.conf'}; }}\n")
    with open(tmp_path / "stderr", "wb") as stderr:
        process = subprocess.Popen([str(NGINX), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                                    "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_listening(port, process, tmp_path / "stderr")
        yield f"http://127.0.0.1:{port}", runs
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def report_server(tmp_path):
    """`make ui`'s report server (flows/server.py, ReportServer). Yields (base URL, runs root)."""
    runs = tmp_path / "runs"
    with ReportServer(runs) as started:
        yield started.url, runs


@pytest.mark.slow
@pytest.mark.parametrize("served", ["nginx", "report_server"])
def test_reports_server_serves_reports_and_nothing_else(served, request):
    base, runs = request.getfixturevalue(served)
    run = _runs_tree(runs)
    # the links the dashboard gets (publish_reports with orchestrate.reports_url) open the report
    [(label, link)] = publish_reports(run, RUN, OrchestrateParams(reports_url=base))
    page = httpx.get(link, timeout=30)
    assert label == "evaluate/report.html" and page.status_code == 200
    assert (page.text == "<html><body>verdict: gain</body></html>"
            and page.headers["content-type"].startswith("text/html"))
    host, port = base.removeprefix("http://").split(":")
    for path in REFUSED:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)  # sends the path as written
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
        finally:
            connection.close()
        assert response.status in (403, 404), f"{served} {path}: {response.status}"
        assert "AKIAEXAMPLE" not in body and "weights" not in body and "images" not in body


# ---------------------------------------------------------------- report links

@pytest.fixture
def temporary_credentials(tmp_path, monkeypatch, s3_endpoint):
    """The pipeline on temporary credentials with distinctive values, and an AWS profile `tlops-reports`
    of a separate read-only identity. Yields the pipeline's (key id, secret, token)."""
    pipeline = ("ASIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), "FwoG" + secrets.token_urlsafe(60))
    make_client(s3_endpoint).create_bucket(Bucket="reports")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[tlops-reports]\naws_access_key_id = TLOPSREPORTSREADER\n"
                           "aws_secret_access_key = reports-reader-secret\n")
    (tmp_path / "aws-config").write_text("")
    for name, value in (("AWS_ACCESS_KEY_ID", pipeline[0]), ("AWS_SECRET_ACCESS_KEY", pipeline[1]),
                        ("AWS_SESSION_TOKEN", pipeline[2]), ("AWS_SHARED_CREDENTIALS_FILE", str(credentials)),
                        ("AWS_CONFIG_FILE", str(tmp_path / "aws-config")), ("AWS_ENDPOINT_URL", s3_endpoint)):
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "TLOPS_REPORTS_STORE", "TLOPS_REPORTS_URL"):
        monkeypatch.delenv(name, raising=False)
    return pipeline


def _leaks(text: str, pipeline: tuple[str, ...]) -> list[str]:
    return [value[:8] + "..." for value in pipeline if value in text]


def _published_run(tmp_path: Path) -> Path:
    run = _runs_tree(tmp_path / "runs")
    shutil.rmtree(run / "reports" / "validate")
    (run / "reports" / ".secret").unlink()
    return run


def test_presigned_links_come_from_the_read_only_profile(tmp_path, temporary_credentials):
    run = _published_run(tmp_path)
    limits = OrchestrateParams(reports_store="s3://reports/tlops", report_link_profile="tlops-reports")
    [(label, link)] = publish_reports(run, RUN, limits)
    assert _leaks(link, temporary_credentials) == [] and "TLOPSREPORTSREADER" in link
    page = httpx.get(link, timeout=30)
    assert page.status_code == 200 and page.text == "<html><body>verdict: gain</body></html>"
    # the same identity as the pipeline is refused, and so is a profile that does not exist
    (tmp_path / "aws-credentials").write_text(f"[same]\naws_access_key_id = {temporary_credentials[0]}\n"
                                              f"aws_secret_access_key = {temporary_credentials[1]}\n")
    with pytest.raises(ValueError, match="report_link_profile = 'same' signs with the pipeline's own access key"):
        publish_reports(run, RUN, limits.model_copy(update={"report_link_profile": "same"}))
    with pytest.raises(ValueError, match="report_link_profile = 'nobody': no such AWS profile"):
        publish_reports(run, RUN, limits.model_copy(update={"report_link_profile": "nobody"}))


def test_without_a_link_identity_the_links_are_plain_locations(tmp_path, temporary_credentials, caplog):
    run = _published_run(tmp_path)
    with caplog.at_level(logging.INFO, logger="tlops"):
        links = publish_reports(run, RUN, OrchestrateParams(reports_store="s3://reports/tlops"))
    assert links == [("evaluate/report.html", f"s3://reports/tlops/{RUN}/reports/evaluate/report.html")]
    assert "set orchestrate.report_link_profile" in caplog.text
    # with a web server of the runs, its links instead (the store still gets the reports)
    served = publish_reports(run, RUN, OrchestrateParams(reports_store="s3://reports/tlops",
                                                         reports_url="https://reports.example"))
    assert served == [("evaluate/report.html", f"https://reports.example/{RUN}/reports/evaluate/report.html")]


@pytest.mark.slow
def test_no_credential_of_the_pipeline_reaches_artifacts_or_the_run(tmp_path, temporary_credentials, server):
    """The retrain flow's publish task and link artifacts (flows/retrain.py), in a flow run on the server."""
    run = _published_run(tmp_path)
    (run / "params.yaml").write_text("orchestrate:\n  reports_store: s3://reports/tlops\n"
                                     "  report_link_profile: tlops-reports\n")

    @flow(name="access-publish")
    def publish_run() -> list:
        links = publish(str(run), RUN)
        for label, link in links:  # as retrain does with them
            create_link_artifact(link, link_text=label, description=f"{label} of run {RUN}")
        return links

    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: AUTH}):
        links = publish_run()
        APILogHandler().flush()  # the run's logs go to this server before its settings are left
    assert links and all(link.startswith("http://127.0.0.1:") for _, link in links)
    with prefect_api(server.api_url, tuple(AUTH.split(":", 1))) as api:
        runs = api.post("/flow_runs/filter", json={"flows": {"name": {"any_": ["access-publish"]}}}).json()
        found = [a for r in runs for a in artifacts(api, r["id"])]
    assert len(found) == len(links)
    for text in [json.dumps(links), json.dumps(found)]:
        assert _leaks(text, temporary_credentials) == []
    for path in run.rglob("*"):
        if path.is_file():
            assert _leaks(path.read_text(errors="replace"), temporary_credentials) == [], path
