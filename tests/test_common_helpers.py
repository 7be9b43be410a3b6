"""Shared helpers: atomic writes leave the old file intact on failure; seeding; device choice; the S3 client
and which S3 failures are transient."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.common.device import select_device
from pipeline.common.errors import TransientError
from pipeline.common.io import atomic_dir, atomic_path, read_json, replaced_as_set, sha256_file, write_json
from pipeline.common.s3 import s3_client, s3_error
from pipeline.common.seeding import seed_everything


def test_write_json_is_sorted_and_handles_numpy(tmp_path):
    path = write_json(tmp_path / "a" / "m.json", {"b": np.float32(0.5), "a": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": 0.5}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = write_json(tmp_path / "m.json", {"good": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "v1.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "v2.txt").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["v1.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "v3.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["v3.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_sha256_file(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256_file(tmp_path / "x") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_seed_everything_repeats():
    seed_everything(3)
    first = (np.random.rand(), torch.rand(2))
    seed_everything(3)
    second = (np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="common.device = 'cuda': CUDA is not available"):
            select_device("cuda")


def test_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    path = write_json(tmp_path / "m.json", {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask


def test_log_lines_follow_the_current_stderr(capsys):
    from pipeline.common.logs import get_logger, setup_logging

    setup_logging("INFO")
    get_logger("pipeline.test").info("hello %s", "there")
    assert "tlops.test: hello there" in capsys.readouterr().err


def _outputs(tmp_path):
    report, metrics = tmp_path / "reports" / "drift", tmp_path / "results" / "drift.json"
    report.mkdir(parents=True)
    (report / "report.html").write_text("old page")
    metrics.parent.mkdir()
    metrics.write_text("old metrics")
    return report, metrics


def test_outputs_replaced_as_a_set_on_success_and_restored_on_failure(tmp_path):
    report, metrics = _outputs(tmp_path)
    with pytest.raises(RuntimeError):
        with replaced_as_set([report, metrics]):
            report.mkdir()
            (report / "outliers.png").write_text("new, partial")
            raise RuntimeError("the stage died")
    assert sorted(p.name for p in report.iterdir()) == ["report.html"] and metrics.read_text() == "old metrics"
    with replaced_as_set([report, metrics]):
        report.mkdir()
        (report / "report.html").write_text("new page")
        metrics.write_text("new metrics")
    assert (report / "report.html").read_text() == "new page" and metrics.read_text() == "new metrics"
    assert not list(tmp_path.rglob(".tlops-previous"))  # no backups left behind


def test_a_killed_stage_gets_its_last_whole_set_back_on_the_next_run(tmp_path):
    report, metrics = _outputs(tmp_path)
    killed = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pipeline.common.io import replaced_as_set
        with replaced_as_set([Path({str(report)!r}), Path({str(metrics)!r})]):
            Path({str(report)!r}).mkdir()
            Path({str(report)!r}, "outliers.png").write_text("new, partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", killed], cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -signal.SIGKILL
    assert not metrics.exists()  # set aside, the new set half-written
    with pytest.raises(RuntimeError):
        with replaced_as_set([report, metrics]):  # restores the last whole set first, then fails itself
            raise RuntimeError("fails again")
    assert sorted(p.name for p in report.iterdir()) == ["report.html"] and metrics.read_text() == "old metrics"


def test_every_s3_client_takes_its_endpoint_from_the_settings_else_the_environment_and_retries_alike(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")  # the S3-only variable wins
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:9001"
    assert s3_client("http://127.0.0.1:9002").meta.endpoint_url == "http://127.0.0.1:9002"  # params win over both
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    client = s3_client(retries=2, connections=32)
    assert client.meta.endpoint_url == "http://127.0.0.1:9000"
    assert client.meta.config.retries == {"total_max_attempts": 3, "mode": "standard"}  # 2 retries after the first
    assert client.meta.config.max_pool_connections == 32
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    with pytest.raises(ValueError, match=r"source.s3_profile = 'nobody': no such AWS profile in /nonexistent/cred"):
        s3_client(profile="nobody", profile_key="source.s3_profile")
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(ValueError, match=r"AWS_PROFILE = 'nobody': no such AWS profile"):
        s3_client()


def _answer(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("failure, kind, message", [
    (_answer("SlowDown", 503), TransientError, "s3://b/k: S3 error SlowDown (throttling or a server error)"),
    (_answer("InternalError", 500), TransientError, "s3://b/k: S3 error InternalError"),
    (_answer("NoSuchBucket", 404), FileNotFoundError, "s3://b/k: bucket 'b' does not exist"),
    (_answer("NoSuchKey", 404), FileNotFoundError, "s3://b/k: no such object"),
    (_answer("AccessDenied", 403), ValueError, "s3://b/k: access denied (AccessDenied)"),
    (_answer("InvalidObjectState", 400), ValueError, "s3://b/k: S3 error InvalidObjectState: InvalidObjectState hap"),
    (ConnectionResetError("reset by peer"), TransientError,
     "s3://b/k: the S3 endpoint http://minio:9000 cannot be reached or dropped the connection"),
])
def test_s3_failures_are_named_and_only_throttling_5xx_and_connections_are_transient(failure, kind, message):
    named = s3_error("s3://b/k", failure, "http://minio:9000")
    assert type(named) is kind and str(named).startswith(message), named


def test_other_errors_pass_through_the_s3_mapping_unchanged():
    err = KeyError("Body")
    assert s3_error("s3://b/k", err, "http://minio:9000") is err
