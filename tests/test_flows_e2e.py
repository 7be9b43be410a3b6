"""End to end, no mocks: a real `prefect server`, the deployments served, runs started over the API, all on S3,
with the first run's processes killed for real at the worst moments.

One module-scoped tiny project copy (32 px, one candidate) reads its images from S3, pushes to an S3 DVC
remote, registers in an S3 registry and uploads its reports to `orchestrate.reports_store` (a real moto server
on loopback), with distinctive temporary S3 credentials (key id, secret and session token) in the environment.
It is served; the tests start runs the way the dashboard does (POST create_flow_run) and check what a user would
see: artifacts, the registry, git tags + DVC state, the dashboard itself in headless Chromium, and the
drift-triggered retrain. During the first run:
- the fine-tune process is SIGKILLed from outside mid-epoch, once its first checkpoint exists;
- the evaluate stage is SIGKILLed after its metrics and figures, before its HTML report;
- the promote stage is SIGKILLed right after the champion pointer moved, before its decision is written.
The flow must retry each stage, the fine-tune must resume from its checkpoint and end where an uninterrupted
fine-tune ends, and afterwards: one valid champion (that run's), whole objects only on the remote, whole
reports, and the credentials in no log, artifact, report, params file, Prefect parameter or git object.
(The faults ride on the served chain rather than a chain of their own: one tiny chain fewer in the suite.)
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import torch
import yaml

from flows.server import PrefectServer, free_port
from pipeline.common.faults import KILL_AT_ENV, KILL_FLAGS_ENV
from pipeline.common.run_names import tag_of
from pipeline.models import LoadedModel
from pipeline.models.export import exported_logits, load_torchscript, onnx_session
from pipeline.registry import open_registry
from pipeline.runs.notify import WEBHOOK_ENV
from tests.conftest import ROOT, copy_project
from tests.support.flowruns import artifacts, finish, prefect_api, start, stop_service, wait_for
from tests.support.prefect_db import seed_home
from tests.support.s3server import make_client
from tests.support.tiny import make_tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the whole chain, killed and retried, then more runs
OUTPUT = ROOT / "test-output"
BUCKET = "e2e"
# made up at each run, so that the values are nowhere in the project's own files (this one included)
KEY_ID, SECRET = "ASIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
TOKEN = "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(60)  # temporary credentials carry a session token
CREDENTIALS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}


def _on_s3(project: Path, work: Path, endpoint: str):
    """Move the tiny project's images, DVC remote, registry and reports to a bucket; the S3 client."""
    client = make_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted((work / "tiny-digits").rglob("*.png")):
        client.upload_file(str(path), BUCKET, f"images/{path.relative_to(work / 'tiny-digits').as_posix()}")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["source"]["location"] = f"s3://{BUCKET}/images"
    params["promote"]["registry"] = f"s3://{BUCKET}/registry"
    params["freeze"]["epochs"] = 3  # a checkpoint to resume from, and epochs after it
    params["orchestrate"].update(push_backoff_s=0.5, retry_backoff_s=0.5,  # the killed stages are retried at once
                                 reports_store=f"s3://{BUCKET}/reports")  # reports uploaded and linked
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc", "remote"]
    subprocess.run([*dvc, "add", "--local", "-f", "-d", "store", f"s3://{BUCKET}/dvc"], cwd=project, check=True)
    subprocess.run([*dvc, "modify", "--local", "store", "endpointurl", endpoint], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "on S3"], cwd=project,
                   check=True)
    return client


@pytest.fixture(scope="module")
def served(tmp_path_factory, s3_endpoint, prefect_db):
    """A tiny project copy on S3, a Prefect server, and `python -m flows.deploy` serving its deployments, with
    the temporary credentials in the environment and the evaluate and promote stages set to be killed once."""
    work = tmp_path_factory.mktemp("e2e")
    # runs here use other seeds, so other splits: 30% test keeps every class in the blessing's evidence
    project = make_tiny_project(copy_project(work / "project"), work / "unused-remote", ingest={"test_fraction": 0.3})
    client = _on_s3(project, work, s3_endpoint)
    flags = work / "kill-flags"
    flags.mkdir()
    # the credentials for the tests' own boto3 and dvc calls, and for what the server and runs inherit
    with pytest.MonkeyPatch.context() as environment:
        for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
            environment.setenv(key, value)
        server = PrefectServer(seed_home(work / "prefect", prefect_db)).start()
        log = open(work / "serve.log", "wb")  # noqa: SIM115 (the serving process's log)
        events = _EventReceiver()  # the runs' events (pipeline/runs/notify.py), POSTed as a team's webhook gets them
        # the runner looks for runs to start every second instead of every 10 (Prefect's default): a test waits for
        # each of its runs to be picked up
        serving = subprocess.Popen([sys.executable, "-m", "flows.deploy"], cwd=project,
                                   env={**server.env(), WEBHOOK_ENV: events.url, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                                        KILL_AT_ENV: "evaluate.report,promote.swapped", KILL_FLAGS_ENV: str(flags)},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        api = prefect_api(server.api_url)
        try:
            wait_for(lambda: api.get("/deployments/name/retrain/retrain-on-demand").status_code == 200, 120,
                      f"deployments never appeared; see {work / 'serve.log'}")
            yield {"project": project, "server": server, "api": api, "work": work, "events": events.received,
                   "client": client, "flags": flags, "registry": open_registry(f"s3://{BUCKET}/registry", project)}
        finally:
            events.close()
            stop_service(serving, 30)
            server.stop()
            api.close()


class _EventReceiver(http.server.ThreadingHTTPServer):
    """A webhook on loopback that keeps every JSON body POSTed to it."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                self.server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.received: list[dict] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/events"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _summary(api: httpx.Client, run_id: str) -> str:
    return next(a["data"] for a in artifacts(api, run_id) if a["key"] in {"retrain-summary", "drift-check-summary"})


def _kill_finetune_mid_epoch(project: Path, killed: list[int], stop: threading.Event) -> None:
    """Watch for the run's first fine-tune checkpoint, then SIGKILL the `tlops finetune` process working in the
    run's worktree (only that one: another test, or a `make run`, may be fine-tuning on this machine meanwhile)."""
    runs = str(project / "runs") + os.sep
    while not stop.is_set():
        for _checkpoint in (project / "runs").glob("*/checkpoints/finetune/last.pt"):
            for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
                cmdline = proc.info["cmdline"] or []
                if ("finetune" in cmdline and any(part.endswith("tlops") for part in cmdline[:2])
                        and (proc.info["cwd"] or "").startswith(runs)):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def first_run(served):
    """The first run, started from the API, its fine-tune killed mid-epoch (and evaluate and promote killed at
    their kill points); its flow run's record plus the killed pids under "killed"."""
    killed: list[int] = []
    stop = threading.Event()
    threading.Thread(target=_kill_finetune_mid_epoch, args=(served["project"], killed, stop), daemon=True).start()
    try:
        run_id = start(served["api"], "retrain", "retrain-on-demand",
                        {"parameters": {"seed": 1, "extra": {"evaluate.ece_bins": 10}},
                         "reason": "started from the API"})
        return {**finish(served["api"], run_id), "killed": killed}
    finally:
        stop.set()


@pytest.fixture(scope="module")
def registered(served, first_run) -> tuple[dict, Path]:
    """The first run's champion record and its version's files, fetched from the S3 registry."""
    record = served["registry"].champion()
    return record, served["registry"].model_dir(record["version"], served["work"] / "fetched")


def test_on_demand_run_versions_promotes_and_reports(served, first_run, registered):
    project, api = served["project"], served["api"]
    summary = _summary(api, first_run["id"])
    for expected in ("started from the API", "Chosen model**: efficientnet_lite0", "Freeze plan", "Transfer verdict",
                     "Scratch baseline**: converged", "side by side with the baseline in", "Drift detected",
                     "Promotion**: promoted", '"common.seed": 1'):
        assert expected in summary, expected
    links = [a["data"] for a in artifacts(api, first_run["id"]) if a["key"] is None]
    assert any("evaluate/report.html" in link for link in links) and any("drift/report.html" in link for link in links)

    tag = next(line for line in summary.splitlines() if "git tag" in line).split("`")[1]
    assert tag in subprocess.run(["git", "tag"], cwd=project, capture_output=True, text=True).stdout.split()
    committed = yaml.safe_load(subprocess.run(["git", "show", f"{tag}:params.yaml"], cwd=project,
                                              capture_output=True, text=True, check=True).stdout)
    assert committed["common"]["seed"] == 1 and committed["evaluate"]["ece_bins"] == 10
    assert yaml.safe_load((project / "params.yaml").read_text())["common"]["seed"] == 0  # only that run

    champion, version = registered
    assert champion["run_tag"] == tag
    promoted = [e for e in served["events"] if e["event"] == "model.promoted" and e["run"] == champion["version"]]
    assert promoted and promoted[0]["version"] == champion["version"] and promoted[0]["decision"] == "promoted"
    assert (version / "card.json").is_file()

    # the tag alone restores the run: fresh clone, dvc pull, nothing left to re-run
    clone = served["work"] / "restore"
    subprocess.run(["git", "clone", "-q", "--branch", tag, str(project), str(clone)], check=True)
    shutil.copy(project / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    subprocess.run([sys.executable, "-m", "dvc", "pull", "-q"], cwd=clone, check=True)
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=clone, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    assert (clone / "models" / "finetuned" / "card.json").is_file()
    # the serving exports come back with it, load, and agree with the model they were exported from
    images = torch.rand(3, 3, 32, 32)
    reference = LoadedModel.load(clone / "models" / "serving").network(images).detach().numpy()
    for name, runner in (("onnx", onnx_session(clone / "models" / "serving")),
                         ("torchscript", load_torchscript(clone / "models" / "serving"))):
        assert abs(exported_logits(name, runner, images) - reference).max() < 1e-3, name
    assert (version / "model.onnx").is_file()


def test_the_model_card_holds_the_runs_numbers_and_its_load_lines_work(served, first_run, registered):
    project, api = served["project"], served["api"]
    card = next(a["data"] for a in artifacts(api, first_run["id"]) if a["key"] == "model-card")
    champion, version = registered
    # the registry keeps the card with the version (the blessing is its decision.json); the artifact adds it
    kept_card = (version / "model_card.md").read_text()
    assert card.startswith(kept_card) and "## Promotion checks" in card[len(kept_card):]
    assert "| references | yes |" in card and "**promoted**" in card
    worktree = project / "runs" / champion["version"]
    metrics = json.loads((worktree / "results" / "evaluate" / "metrics.json").read_text())
    drift = json.loads((worktree / "results" / "drift" / "drift.json").read_text())
    candidate = metrics["recommended_model"]
    interval = metrics["full_labels"][f"{candidate}_interval"]
    test = metrics["models"]["test"][candidate]
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")) for line in card.splitlines()
            if line.startswith("|")}
    assert ("test accuracy", f"{test['accuracy']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]") in rows
    assert ("macro-F1", f"{test['macro_f1']:.4f}") in rows
    for corruption, severities in metrics["robustness"][candidate].items():
        for severity, accuracy in severities.items():
            assert (corruption, severity, f"{accuracy:.4f}") in rows, (corruption, severity)
    for name, row in test["per_class"].items():
        assert (name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}",
                str(row["support"])) in rows
    assert f"Transfer verdict: {metrics['verdict']}" in card
    assert f"drift {'detected' if drift['drift_detected'] else 'not detected'}" in card

    # the card's three lines, run as written in the version's folder, give the model's logits
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(version)
    try:
        exec(code, scope)  # noqa: S102 - the card's own instructions, on our own model
    finally:
        os.chdir(cwd)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scope["model"](images), LoadedModel.load(version).network(images), atol=1e-5)


def test_the_flow_retries_each_killed_stage_and_completes(served, first_run):
    assert first_run["killed"], "the fine-tune was never killed: the test proved nothing"
    assert sorted(p.name for p in served["flags"].iterdir()) == ["evaluate.report", "promote.swapped"]
    summary = _summary(served["api"], first_run["id"])
    assert "| finetune | ran (attempt 2, resuming at phase" in summary, summary  # resumed, not started over
    for stage in ("evaluate", "promote"):
        assert f"| {stage} | ran (attempt 2" in summary, summary
    for stage in ("ingest", "baseline"):
        assert re.search(rf"^\| {stage} \| ran \| [0-9.]+ \|$", summary, re.MULTILINE), summary


def test_the_resumed_fine_tune_ends_where_an_uninterrupted_one_ends(served, registered):
    workspace = served["project"] / "runs" / registered[0]["version"]
    resumed = json.loads((workspace / "results/finetune/metrics.json").read_text())
    again = served["work"] / "uninterrupted"
    cmd = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]["finetune"]["cmd"].split()
    for flag, name in (("--model-dir", "model"), ("--metrics", "metrics.json"), ("--history", "history.csv"),
                       ("--plot", "curves.png"), ("--checkpoints", "checkpoints")):
        cmd[cmd.index(flag) + 1] = str(again / name)
    # the kill points are set in the serving process only: this run goes uninterrupted
    subprocess.run([str(Path(sys.executable).with_name("tlops")), *cmd[1:]], cwd=workspace, check=True,
                   capture_output=True)
    uninterrupted = json.loads((again / "metrics.json").read_text())
    assert resumed["epochs_run"] == uninterrupted["epochs_run"] >= 2
    for key in ("best_epoch", "val_accuracy", "test_accuracy"):
        assert resumed[key] == uninterrupted[key], key
    assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-5)


def test_one_valid_champion_whole_objects_and_whole_reports(served, registered):
    champion, version = registered
    client, workspace = served["client"], served["project"] / "runs" / champion["version"]
    assert served["registry"].versions() == [champion["version"]]
    decision = json.loads((workspace / "results/promote/decision.json").read_text())
    assert decision["promoted"] is True and decision["version"] == champion["version"]  # the killed attempt promoted
    kept = "finetuned" if decision["candidate"] == "finetuned" else "baseline"
    local = json.loads((workspace / "models" / kept / "card.json").read_text())
    assert json.loads((version / "card.json").read_text())["state_dict_sha256"] == local["state_dict_sha256"]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="dvc/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert keys
    for key in keys:  # DVC names objects by the md5 of their content
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert hashlib.md5(body).hexdigest() == "".join(key.split("/")[-2:]).removesuffix(".dir"), key
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud"], cwd=workspace, capture_output=True,
                            text=True)
    assert "in sync" in status.stdout, status.stdout + status.stderr
    report = (workspace / "reports/evaluate/report.html").read_text()
    assert report.rstrip().endswith("</html>")
    metrics = json.loads((workspace / "results/evaluate/metrics.json").read_text())
    assert metrics["verdict"] in report
    assert not list(workspace.rglob("*.tlops-previous*")) and not list(workspace.rglob("*.tmp"))


def test_dashboard_shows_deployment_and_run(served, first_run):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    OUTPUT.mkdir(exist_ok=True)
    base = served["server"].ui_url
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={served['work'] / 'chromium'}", "--virtual-time-budget=15000",
             "--window-size=1400,900"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", f"{base}/deployments"], capture_output=True, text=True,
                         timeout=120).stdout
    assert "retrain-on-demand" in dom and "drift-check" in dom
    dom = subprocess.run([chromium, *flags, "--dump-dom", f"{base}/runs/flow-run/{first_run['id']}"],
                         capture_output=True, text=True, timeout=120).stdout
    assert first_run["name"] in dom and "Completed" in dom
    for page, url in (("deployments", f"{base}/deployments"), ("run", f"{base}/runs/flow-run/{first_run['id']}")):
        shot = OUTPUT / f"dashboard-{page}.png"
        subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
        assert shot.stat().st_size > 10_000


def test_drift_check_on_shifted_set_starts_a_retrain_that_skips_training(served, first_run):
    api = served["api"]
    run_id = start(api, "drift-check", "drift-check",
                    {"parameters": {"retrain": {"seed": 1, "extra": {"evaluate.ece_bins": 10}}}})
    finish(api, run_id)
    assert "Drift detected**: True" in _summary(api, run_id)
    # the champion's predictions on the checked batch: saved in the drift check's worktree, counted in a table
    table = next(a for a in artifacts(api, run_id) if a["key"] == "drift-check-predictions")
    predictions = pd.read_parquet(next((served["project"] / "runs").glob("*/predictions/predictions.parquet")))
    assert (predictions["model_version"].str.startswith("champion ")).all() and len(predictions) > 0
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    counts = {row["class"]: row["images"] for row in rows}
    assert sum(counts.values()) == len(predictions)
    triggered = api.post("/flow_runs/filter", json={"flow_runs": {"tags": {"all_": ["drift-triggered"]}}}).json()
    assert len(triggered) == 1
    retrain = finish(api, triggered[0]["id"])
    assert retrain["parameters"]["reason"].startswith("drift detected by drift check")
    # it asks for the first run's parameters on the same images: a rerun with the same inputs skips training
    summary = _summary(api, retrain["id"])
    assert "Training stages skipped: every one was up to date" in summary
    for stage in ("ingest", "select", "finetune", "baseline", "evaluate"):
        assert f"| {stage} | skipped |" in summary


def test_two_runs_compare_in_dvc_by_their_tags(served, first_run):
    """The README's comparison commands, run in the main checkout on two run tags."""
    project = served["project"]
    tags = subprocess.run(["git", "tag", "--list", "run-*", "--sort=creatordate"], cwd=project, capture_output=True,
                          text=True, check=True).stdout.split()
    assert len(tags) >= 2, tags
    first, last = tags[0], tags[-1]

    def dvc(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                              check=True).stdout

    diff = json.loads(dvc("metrics", "diff", "--all", "--json", first, last))
    assert {"results/evaluate/metrics.json", "results/finetune/live/metrics.json"} <= set(diff)
    assert "test_accuracy.finetuned" in diff["results/evaluate/metrics.json"]
    assert "val_accuracy" in diff["results/finetune/live/metrics.json"]
    shown = dvc("exp", "show", "--all-tags", "--csv")
    assert first in shown and last in shown and "test_accuracy.finetuned" in shown
    plots = json.loads(dvc("plots", "diff", "--json", first, last))["data"]
    curve = plots["results/finetune/live/plots/metrics/val_accuracy.tsv"][0]  # DVCLive's per-epoch plot
    assert set(curve["revisions"]) == {first, last}
    assert {row["rev"] for row in curve["content"]["data"]["values"]} == {first, last}


def test_deployments_have_schedules_limits_and_a_parameter_form(served):
    api = served["api"]
    scheduled = api.get("/deployments/name/retrain/retrain-scheduled").json()
    assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == ["0 3 * * 1"]
    # Prefect 3 keeps the limit here, not in concurrency_limit
    assert scheduled["global_concurrency_limit"]["limit"] == 1
    assert scheduled["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    drift = api.get("/deployments/name/drift-check/drift-check").json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 6 * * *"]
    form = api.get("/deployments/name/retrain/retrain-on-demand").json()["parameter_openapi_schema"]
    fields = form["definitions"]["RetrainParameters"]["properties"]
    assert {"source", "candidates", "strategy", "epochs", "device", "extra"} <= set(fields)


def test_make_ui_serves_on_the_server_it_started_with_a_reports_server(tmp_path, prefect_db):
    """`make ui` (flows.deploy --start-server): the deployments land on the server it started, not on a
    temporary one; that server is closed by the auth string generated into .prefect/auth-string; the
    reports web server answers, with no directory listing."""
    project = copy_project(tmp_path / "project")
    seed_home(project / ".prefect", prefect_db)  # the server `make ui` starts keeps its database there
    port, reports_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = open(tmp_path / "ui.log", "wb")  # noqa: SIM115 (the UI process's log)
    ui = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--start-server", "--port", str(port),
                           "--reports-port", str(reports_port)], cwd=project, env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api, secret = f"http://127.0.0.1:{port}/api", project / ".prefect" / "auth-string"

        def served() -> bool:
            try:
                auth = tuple(secret.read_text().strip().split(":", 1)) if secret.is_file() else None
                return httpx.get(f"{api}/deployments/name/retrain/retrain-scheduled", auth=auth,
                                 timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(served, 180, f"deployments never appeared on the started server; see {tmp_path / 'ui.log'}")
        assert secret.stat().st_mode & 0o777 == 0o600 and str(secret) in (tmp_path / "ui.log").read_text()
        assert httpx.get(f"{api}/deployments/name/retrain/retrain-scheduled", timeout=5).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{reports_port}/", timeout=10).status_code == 404  # no listing
        assert "temporary server" not in (tmp_path / "ui.log").read_text()
    finally:
        ui.send_signal(signal.SIGTERM)  # as a service manager stops it: the server it started stops too
        ui.wait(timeout=60)
    wait_for(lambda: not _serving(port), 30, f"the Prefect server on port {port} outlived `make ui`")


def _serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_scheduled_drift_check_reads_every_served_batch_once(served, first_run):
    """With serve.sample_store set, the check reads what `tlops serve` sampled (here written by its SampleWriter):
    both batches waiting, as one current set (an image sent in both counted once), marks each checked, and the
    next check finds nothing new."""
    from pipeline.serving.samples import CHECKED, SampleWriter

    project, api = served["project"], served["api"]
    params_file = project / "params.yaml"
    committed = params_file.read_text()
    writer = SampleWriter("served-samples", project, rate=1.0, batch_images=1000, batch_s=3600, seed=0)
    images = sorted((served["work"] / "tiny-digits").rglob("*.png"))[:40]  # the training source's images
    batches = []
    for part in (images[:25], images[15:]):
        if batches:
            time.sleep(1.1)  # batch names hold the second they closed
        for path in part:
            writer.offer(path.read_bytes(), "PNG", {"predicted": path.parent.name, "confidence": 0.9,
                                                    "model_version": "champion"})
        batches.append(writer.flush())
    params = yaml.safe_load(committed)
    params.setdefault("serve", {})["sample_store"] = "served-samples"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        checked = finish(api, start(api, "drift-check", "drift-check", {"parameters": {"retrain_on_drift": False}}))
        records = [json.loads((project / "served-samples" / batch / CHECKED).read_text()) for batch in batches]
        record = records[0]
        assert all(checked["name"] in r["run"] for r in records)
        assert [{k: v for k, v in r.items() if k != "checked_at"} for r in records[1:]] == [  # marked one by one
            {k: v for k, v in record.items() if k != "checked_at"}]
        assert isinstance(record["drift_detected"], bool)
        worktree = next(p for p in (project / "runs").iterdir() if record["run"] in p.name)
        current = pd.read_parquet(worktree / "data" / "current" / "manifest.parquet")
        assert len(current) == 40 and (current["label"] == "").all()  # the served images, unlabelled, each once
        assert set(current["corruption"]) == {f"batch:served-batches-{record['run']}"}  # the check's own listing
        # only shift.source differs from the champion's params: DVC re-ran none of the champion's chain
        champion_lock = subprocess.run(["git", "show", f"{tag_of(record['champion'])}:dvc.lock"], cwd=project,
                                       capture_output=True, text=True, check=True).stdout
        stages, before = (yaml.safe_load(text)["stages"] for text in ((worktree / "dvc.lock").read_text(),
                                                                      champion_lock))
        assert all(stages[name] == before[name] for name in ("ingest", "validate", "select", "finetune")), (
            "the drift check re-ran the champion's stages")

        again = start(api, "drift-check", "drift-check", {"parameters": {"retrain_on_drift": False}})
        finish(api, again)
        assert not [a for a in artifacts(api, again) if a["key"] == "drift-check-summary"]  # nothing new: no check
        assert [json.loads((project / "served-samples" / b / CHECKED).read_text()) for b in batches] == records
    finally:
        params_file.write_text(committed)


def _every(api: httpx.Client, path: str) -> list[dict]:
    """Every record a Prefect filter endpoint holds, page by page (it answers at most 200 at a time)."""
    found: list[dict] = []
    while page := api.post(path, json={"limit": 200, "offset": len(found)}).raise_for_status().json():
        found += page
    return found


def test_the_credentials_are_in_no_file_log_artifact_parameter_or_git_object(served, first_run):
    """Last in the module: every run above (the killed and retried one, the drift checks, the triggered retrain)
    has left its files, logs and artifacts by now."""
    project, api = served["project"], served["api"]
    needles = [KEY_ID.encode(), SECRET.encode(), TOKEN.encode()]
    leaks = [str(path) for path in project.rglob("*") if path.is_file() and not path.is_symlink()
             and any(n in path.read_bytes() for n in needles)]
    assert not leaks, f"credentials written to {leaks}"
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=project, capture_output=True,
                             check=True).stdout
    assert objects and not any(n in objects for n in needles), "credentials in a git object"
    runs, logs, stored = (_every(api, path) for path in ("/flow_runs/filter", "/logs/filter", "/artifacts/filter"))
    prefect = json.dumps([runs, logs, stored])
    assert "started from the API" in prefect and len(runs) >= 4 and logs  # the Prefect records were read
    assert KEY_ID not in prefect and SECRET not in prefect and TOKEN not in prefect, (
        "credentials in a Prefect log, artifact or parameter")
    # the reports went to reports_store, and their links (no read-only signer configured) are plain locations;
    # Prefect stores a link artifact as markdown "[label](link)"
    links = [m[1] for a in artifacts(api, first_run["id"])
             if (m := re.fullmatch(r"\[[^\]]+\]\((.+)\)", str(a["data"])))]
    assert links and all(link.startswith(f"s3://{BUCKET}/reports/") for link in links), links
    assert served["client"].list_objects_v2(Bucket=BUCKET, Prefix="reports/")["KeyCount"] >= len(links)
