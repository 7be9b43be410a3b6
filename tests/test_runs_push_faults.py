"""`dvc push` of a run under storage faults, on a real S3 server (moto) behind a fault-injecting proxy.

A toy stage writes a folder of random files (DVC objects of a few KiB each), so a push has many
uploads to cut into. What must hold: a store answering 500s is retried with backoff and the push
completes once it recovers; a store that stays down is a transient failure naming the error; a push
killed with SIGKILL midway leaves only whole objects on the remote and a rerun completes it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.server import free_port
from pipeline.common.errors import TransientError
from pipeline.runs.workspace import RunWorkspace
from tests.support.s3server import ThrottlingProxy, make_client

pytestmark = pytest.mark.slow  # dvc push subprocesses through a fault-injecting proxy

BUCKET, PREFIX = "dvc-store", "remote"
FILES = 24
TOY_STAGE = {"cmd": f"{sys.executable} -P toy.py", "deps": ["toy.py"], "params": ["common"], "outs": ["data/toy"]}
TOY_SCRIPT = f"""
import os, pathlib, random, yaml
seed = yaml.safe_load(open("params.yaml"))["common"]["seed"]
rng = random.Random(seed)
out = pathlib.Path("data/toy")
out.mkdir(parents=True, exist_ok=True)
for i in range({FILES}):
    (out / f"part-{{i:02d}}.bin").write_bytes(rng.randbytes(4096))
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def toy_s3(project: Path, s3_endpoint, monkeypatch):
    """The toy pipeline, committed, with an S3 default remote whose endpoint each test points at its proxy."""
    # botocore retries a 500 itself (5 attempts with backoff, ~35 s of a failing store): one retry of its own
    # keeps that layer in the test while the retries under test are the push's (orchestrate.push_retries)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": TOY_STAGE}}))
    (project / "toy.py").write_text(TOY_SCRIPT)
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    assert _dvc(project, "remote", "add", "--local", "-f", "-d", "store", f"s3://{BUCKET}/{PREFIX}").returncode == 0
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "toy pipeline")
    yield project, client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _point_remote_at(workspace: RunWorkspace, endpoint: str) -> None:
    assert _dvc(workspace.path, "remote", "modify", "--local", "store", "endpointurl", endpoint).returncode == 0


def _remote_objects(client) -> dict[str, bytes]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return {key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def _assert_all_whole(objects: dict[str, bytes]) -> None:
    """DVC names each object by the md5 of its content (files/md5/ab/cdef...[.dir]): a partial object
    would not hash to its own name."""
    for key, body in objects.items():
        name = "".join(key.split("/")[-2:]).removesuffix(".dir")
        assert hashlib.md5(body).hexdigest() == name, f"{key}: content does not match its name (partial?)"


def _run(project: Path, name: str, **overrides) -> RunWorkspace:
    workspace = RunWorkspace.create(project, name, overrides={"orchestrate.push_backoff_s": 0.1, **overrides})
    assert workspace.repro("toy").status == "ran"
    workspace.commit(f"run {name}")
    return workspace


def test_a_store_answering_500s_is_retried_until_it_recovers(toy_s3, s3_endpoint, monkeypatch, caplog):
    project, client = toy_s3
    with ThrottlingProxy(s3_endpoint, failures=10**6, fault="error", methods=("PUT",)) as proxy:
        workspace = _run(project, "recovers", **{"orchestrate.push_retries": 3})
        _point_remote_at(workspace, proxy.url)
        real_sleep = time.sleep

        def recover_during_the_backoff(seconds: float) -> None:
            proxy.heal()
            real_sleep(seconds)

        monkeypatch.setattr("pipeline.runs.workspace.time.sleep", recover_during_the_backoff)
        workspace.push()
        assert "Cache and remote 'store' are in sync" in _dvc(workspace.path, "status", "--cloud").stdout
    assert sum(proxy.throttled.values()) > 0, "the store never failed: the test proved nothing"
    assert "dvc push failed (attempt 1 of 4)" in caplog.text
    objects = _remote_objects(client)
    assert len(objects) == FILES + 1  # every file and the folder's listing
    _assert_all_whole(objects)


def test_a_store_that_stays_down_is_a_transient_failure_naming_the_error(toy_s3):
    project, _ = toy_s3
    workspace = _run(project, "down", **{"orchestrate.push_retries": 1})
    _point_remote_at(workspace, f"http://127.0.0.1:{free_port()}")  # nothing listens there: a stopped store
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"dvc push from .* failed 2 times; last error: ERROR: .*") as err:
        workspace.push()
    assert "127.0.0.1" in str(err.value) or "connect" in str(err.value).lower(), err.value
    assert time.monotonic() - started < 600


def test_a_push_killed_midway_leaves_only_whole_objects_and_a_rerun_completes_it(toy_s3, s3_endpoint):
    project, client = toy_s3
    with ThrottlingProxy(s3_endpoint, failures=0, methods=("PUT",), delay_s=0.3) as proxy:
        workspace = _run(project, "killed")
        _point_remote_at(workspace, proxy.url)
        push = subprocess.Popen([sys.executable, "-m", "dvc", "push"], cwd=workspace.path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while proxy.forwarded["PUT"] < 3 and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(push.pid, signal.SIGKILL)
        push.wait(timeout=30)
        assert push.returncode == -signal.SIGKILL, "the push finished before it could be killed"
        time.sleep(1)  # uploads the proxy still holds reach the store (or not) whole
        partial = _remote_objects(client)
        assert 0 < len(partial) < FILES + 1, f"{len(partial)} objects: the kill did not land midway"
        _assert_all_whole(partial)

        workspace.push()  # the rerun uploads what is missing
        assert "Cache and remote 'store' are in sync" in _dvc(workspace.path, "status", "--cloud").stdout
    objects = _remote_objects(client)
    assert len(objects) == FILES + 1
    _assert_all_whole(objects)


def test_a_store_too_slow_for_the_limit_fails_the_push_naming_the_limit(toy_s3, s3_endpoint):
    project, _ = toy_s3
    with ThrottlingProxy(s3_endpoint, failures=0, methods=("PUT",), delay_s=10) as proxy:
        workspace = _run(project, "slow", **{"orchestrate.push_retries": 1, "orchestrate.command_timeout_s": 8})
        _point_remote_at(workspace, proxy.url)
        with pytest.raises(TransientError, match=r"failed 2 times; last error: `.*dvc push` in .* ran past 8 s "
                                                   r"\(orchestrate.command_timeout_s\) and was stopped"):
            workspace.push()

