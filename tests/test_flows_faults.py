"""One retrain flow run on S3, with the processes it starts killed for real at the worst moments.

The run reads its images from S3, pushes to an S3 DVC remote and registers in an S3 registry (a real
moto server on loopback), uploads its reports to `orchestrate.reports_store`, with distinctive temporary S3
credentials (key id, secret and session token) in the environment. During the run:
- the fine-tune process is SIGKILLed from outside mid-epoch, once its first checkpoint exists;
- the evaluate stage is SIGKILLed after its metrics and figures, before its HTML report;
- the promote stage is SIGKILLed right after the champion pointer moved, before its decision is written.
The flow must retry each stage, the fine-tune must resume from its checkpoint and end where an
uninterrupted fine-tune ends, and afterwards: one valid champion (this run's), whole objects only on
the remote, whole reports, and the credentials in no log, artifact, report, params file, Prefect
parameter or git object.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from pipeline.common.faults import KILL_AT_ENV, KILL_FLAGS_ENV
from pipeline.registry import open_registry
from tests.conftest import copy_project
from tests.support.s3server import make_client
from tests.support.tiny import make_tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the whole chain, killed and retried
# made up at each run, so that the values are nowhere in the project's own files (this one included)
KEY_ID, SECRET = "ASIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
TOKEN = "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(60)  # temporary credentials carry a session token
BUCKET = "flow-faults"


def _upload_folder(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*.png")):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


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
def faulty_run(tmp_path_factory, s3_endpoint):
    work = tmp_path_factory.mktemp("flow-faults")
    project = make_tiny_project(copy_project(work / "project"), work / "unused-remote")
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    _upload_folder(client, work / "tiny-digits", "images")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["source"]["location"] = f"s3://{BUCKET}/images"
    params["promote"]["registry"] = f"s3://{BUCKET}/registry"
    params["freeze"]["epochs"] = 3  # a checkpoint to resume from, and epochs after it
    params["orchestrate"]["push_backoff_s"] = 0.5
    params["orchestrate"]["retry_backoff_s"] = 0.5  # the three killed stages are retried at once
    params["orchestrate"]["reports_store"] = f"s3://{BUCKET}/reports"  # reports uploaded and linked
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc", "remote"]
    subprocess.run([*dvc, "add", "--local", "-f", "-d", "store", f"s3://{BUCKET}/dvc"], cwd=project, check=True)
    subprocess.run([*dvc, "modify", "--local", "store", "endpointurl", s3_endpoint], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "on S3"], cwd=project,
                   check=True)
    flags = work / "kill-flags"
    flags.mkdir()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                            "AWS_ENDPOINT_URL",
                                            KILL_AT_ENV, KILL_FLAGS_ENV)}
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
                       "AWS_ENDPOINT_URL": s3_endpoint,
                       KILL_AT_ENV: "evaluate.report,promote.swapped", KILL_FLAGS_ENV: str(flags)})
    cwd = os.getcwd()
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_finetune_mid_epoch, args=(project, killed, stop), daemon=True)
    try:
        os.chdir(project)
        with prefect_test_harness():
            from prefect import get_client

            from flows.parameters import RetrainParameters
            from flows.retrain import retrain

            watcher.start()
            state = retrain(RetrainParameters(), reason="fault suite", return_state=True)
            with get_client(sync_client=True) as api:
                run = api.read_flow_run(state.state_details.flow_run_id)
                logs = api.read_logs()
                artifacts = api.read_artifacts()
                prefect_text = json.dumps([run.model_dump(mode="json"), [log.model_dump(mode="json") for log in logs],
                                           [a.model_dump(mode="json") for a in artifacts]])
            yield {"state": state, "result": state.result(raise_on_failure=False), "project": project,
                   "client": client, "killed": killed, "flags": flags, "prefect": prefect_text, "work": work}
    finally:
        stop.set()
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_flow_retries_each_killed_stage_and_completes(faulty_run):
    assert faulty_run["state"].is_completed(), faulty_run["state"]
    assert faulty_run["killed"], "the fine-tune was never killed: the test proved nothing"
    assert sorted(p.name for p in faulty_run["flags"].iterdir()) == ["evaluate.report", "promote.swapped"]
    attempts = {s["stage"]: s["attempt"] for s in faulty_run["result"]["stages"]}
    assert attempts["finetune"] == attempts["evaluate"] == attempts["promote"] == 2, attempts
    assert attempts["ingest"] == attempts["baseline"] == 1
    resumed = {s["stage"]: s["resumed"] for s in faulty_run["result"]["stages"]}
    assert resumed["finetune"].startswith("resuming at phase"), resumed  # not started over
    assert "| finetune | ran (attempt 2, resuming at phase" in faulty_run["prefect"]  # the run summary says so


def test_the_resumed_fine_tune_ends_where_an_uninterrupted_one_ends(faulty_run):
    workspace = Path(faulty_run["result"]["workspace"])
    resumed = json.loads((workspace / "results/finetune/metrics.json").read_text())
    again = faulty_run["work"] / "uninterrupted"
    cmd = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]["finetune"]["cmd"].split()
    for flag, name in (("--model-dir", "model"), ("--metrics", "metrics.json"), ("--history", "history.csv"),
                       ("--plot", "curves.png"), ("--checkpoints", "checkpoints")):
        cmd[cmd.index(flag) + 1] = str(again / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLOPS_")}
    subprocess.run([str(Path(sys.executable).with_name("tlops")), *cmd[1:]], cwd=workspace, check=True, env=env,
                   capture_output=True)
    uninterrupted = json.loads((again / "metrics.json").read_text())
    assert resumed["epochs_run"] == uninterrupted["epochs_run"] >= 2
    for key in ("best_epoch", "val_accuracy", "test_accuracy"):
        assert resumed[key] == uninterrupted[key], key
    assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-5)


def test_one_valid_champion_whole_objects_and_whole_reports(faulty_run):
    result, client = faulty_run["result"], faulty_run["client"]
    workspace = Path(result["workspace"])
    registry = open_registry(f"s3://{BUCKET}/registry", workspace)
    champion = registry.champion()
    assert champion["version"] == result["run"] and registry.versions() == [result["run"]]
    decision = json.loads((workspace / "results/promote/decision.json").read_text())
    assert decision["promoted"] is True and decision["version"] == result["run"]  # the killed attempt had promoted
    card = json.loads((registry.model_dir(result["run"], faulty_run["work"] / "fetched") / "card.json").read_text())
    kept = "finetuned" if decision["candidate"] == "finetuned" else "baseline"
    local = json.loads((workspace / "models" / kept / "card.json").read_text())
    assert card["state_dict_sha256"] == local["state_dict_sha256"]
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


def test_the_credentials_are_in_no_file_log_artifact_parameter_or_git_object(faulty_run):
    project = faulty_run["project"]
    needles = [KEY_ID.encode(), SECRET.encode(), TOKEN.encode()]
    leaks = [str(path) for path in project.rglob("*") if path.is_file() and not path.is_symlink()
             and any(n in path.read_bytes() for n in needles)]
    assert not leaks, f"credentials written to {leaks}"
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=project, capture_output=True,
                             check=True).stdout
    assert objects and not any(n in objects for n in needles), "credentials in a git object"
    prefect = faulty_run["prefect"]
    assert "fault suite" in prefect  # the Prefect records were read
    assert KEY_ID not in prefect and SECRET not in prefect and TOKEN not in prefect, (
        "credentials in a Prefect log, artifact or parameter")
    # the reports went to reports_store, and their links (no read-only signer configured) are plain locations;
    # Prefect stores a link artifact as markdown "[label](link)"
    links = [m[1] for a in json.loads(prefect)[2] if (m := re.fullmatch(r"\[[^\]]+\]\((.+)\)", str(a["data"])))]
    assert links and all(link.startswith(f"s3://{BUCKET}/reports/") for link in links), links
    assert faulty_run["client"].list_objects_v2(Bucket=BUCKET, Prefix="reports/")["KeyCount"] >= len(links)
