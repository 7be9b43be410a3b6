"""Ingest from s3:// on a real local S3 server (moto), retries under throttling, and DVC push/pull of the
ingested data through an S3 remote and the local default remote, byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.common.io import sha256_file
from pipeline.data.shards import read_manifest, verify_dataset
from tests.support.badimages import good_png
from flows.server import free_port
from tests.support.s3server import ThrottlingProxy, make_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    """Bucket 'pets' with ImageFolder layout under 'v1/': 2 classes x 6 images, nested keys, one bad object."""
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket="pets")
    for i in range(12):
        key = f"v1/{('cat', 'dog')[i % 2]}/{'sub/' if i % 4 == 0 else ''}{i}.png"
        client.put_object(Bucket="pets", Key=key, Body=good_png(i, 10))
    client.put_object(Bucket="pets", Key="v1/dog/notes.txt", Body=b"no image here")
    client.put_object(Bucket="pets", Key="v1/README", Body=b"top level")
    return "pets"


def _ingest(out: Path, *overrides: str) -> int:
    argv = ["ingest", "--dataset", str(out / "dataset"), "--metrics", str(out / "m.json"), "--report-dir",
            str(out / "report")]
    for item in overrides:
        argv += ["--set", item]
    return main(argv)


def test_ingest_from_s3(s3_endpoint, bucket, tmp_path):
    assert _ingest(tmp_path, "source.location=s3://pets/v1", f"source.s3_endpoint_url={s3_endpoint}",
                   "source.read_workers=4") == 0
    manifest = read_manifest(tmp_path / "dataset")
    assert len(manifest) == 12 and sorted(manifest["label"].unique()) == ["cat", "dog"]
    assert "s3://pets/v1/cat/sub/0.png" in set(manifest["source_path"])
    report = yaml.safe_load((tmp_path / "report" / "ingest_report.json").read_text())
    assert {s["path"]: s["reason"].split(" (")[0] for s in report["skipped"]} == {
        "s3://pets/v1/README": "not inside a class folder", "s3://pets/v1/dog/notes.txt": "not an image"}


def test_s3_table_of_uris(s3_endpoint, bucket, tmp_path, capsys):
    pd.DataFrame({"uri": ["s3://pets/v1/cat/2.png", "s3://pets/v1/dog/1.png", "s3://pets/v1/dog/3.png",
                          "s3://pets/v1/cat/6.png", "s3://pets/v1/cat/gone.png"],
                  "label": ["cat", "dog", "dog", "cat", "cat"]}).to_csv(tmp_path / "list.csv", index=False)
    source = (f"source.location={tmp_path / 'list.csv'}", f"source.s3_endpoint_url={s3_endpoint}")
    # an object that fails to download fails the ingest by default: no model trained on part of the data
    assert _ingest(tmp_path, *source) == 2
    err = capsys.readouterr().err
    assert "1 of 5 file(s) could not be read (20.0% > source.max_unreadable_fraction = 0)" in err
    assert "e.g. s3://pets/v1/cat/gone.png: unreadable: s3://pets/v1/cat/gone.png: no such object" in err
    assert not (tmp_path / "dataset").exists()
    assert _ingest(tmp_path, *source, "source.max_unreadable_fraction=0.25") == 0  # a share the user accepts
    report = yaml.safe_load((tmp_path / "report" / "ingest_report.json").read_text())
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        ("s3://pets/v1/cat/gone.png", "unreadable: s3://pets/v1/cat/gone.png: no such object")]


def test_missing_bucket_and_prefix_are_named(s3_endpoint, bucket, tmp_path, capsys):
    assert _ingest(tmp_path, "source.location=s3://no-such-bucket/x", f"source.s3_endpoint_url={s3_endpoint}") == 2
    assert "s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    assert _ingest(tmp_path, "source.location=s3://pets/v9", f"source.s3_endpoint_url={s3_endpoint}") == 2
    assert "s3://pets/v9: no objects under this prefix" in capsys.readouterr().err


def test_throttling_is_retried_with_backoff(s3_endpoint, bucket, tmp_path, capsys):
    with ThrottlingProxy(s3_endpoint, failures=2) as proxy:
        assert _ingest(tmp_path / "ok", "source.location=s3://pets/v1", f"source.s3_endpoint_url={proxy.url}",
                       "source.s3_retries=3") == 0
        assert len(read_manifest(tmp_path / "ok" / "dataset")) == 12
        assert sum(proxy.throttled.values()) == 2 * 13  # every object answered 503 twice before succeeding
    with ThrottlingProxy(s3_endpoint, failures=2) as proxy:
        capsys.readouterr()
        # still throttled after the retries: transient (exit 75, the flow retries the stage), never bad input
        assert _ingest(tmp_path / "no", "source.location=s3://pets/v1", f"source.s3_endpoint_url={proxy.url}",
                       "source.s3_retries=0") == 75
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("tlops ingest: transient error (worth a retry): s3://pets/v1/")
        assert "S3 error SlowDown (throttling or a server error)" in err
    assert not (tmp_path / "no" / "dataset").exists()


def test_a_body_cut_off_midway_is_fetched_again(s3_endpoint, bucket, tmp_path):
    with ThrottlingProxy(s3_endpoint, failures=1, fault="cut") as proxy:
        assert _ingest(tmp_path, "source.location=s3://pets/v1", f"source.s3_endpoint_url={proxy.url}",
                       "source.s3_retries=2") == 0
        assert sum(proxy.throttled.values()) == 13  # every object's first body broke off halfway
    manifest = read_manifest(tmp_path / "dataset")
    assert len(manifest) == 12 and verify_dataset(tmp_path / "dataset") == 12  # no half image stored


def test_a_stopped_store_is_transient(bucket, tmp_path, capsys):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    assert _ingest(tmp_path, "source.location=s3://pets/v1", f"source.s3_endpoint_url={down}",
                   "source.s3_retries=1") == 75
    assert f"s3://pets/v1: the S3 endpoint {down} cannot be reached" in capsys.readouterr().err


def _dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dvc_repro_push_pull_through_s3_and_local_remotes(s3_endpoint, bucket, project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["source"].update(location="s3://pets/v1", s3_endpoint_url=s3_endpoint)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_client(s3_endpoint).create_bucket(Bucket="dvc-store")
    _dvc(project, "remote", "add", "s3store", "s3://dvc-store/cache")
    _dvc(project, "remote", "modify", "s3store", "endpointurl", s3_endpoint)
    _dvc(project, "repro", "ingest")
    before = _snapshot(project / "data" / "dataset")
    assert len(read_manifest(project / "data" / "dataset")) == 12
    for remote in (["-r", "s3store"], []):  # the S3 remote, then the local default remote of .dvc/config
        _dvc(project, "push", *remote, "ingest")
        shutil.rmtree(project / ".dvc" / "cache")
        shutil.rmtree(project / "data" / "dataset")
        _dvc(project, "pull", *remote, "ingest")
        assert _snapshot(project / "data" / "dataset") == before
    assert "cache/files/md5/" in str(make_client(s3_endpoint).list_objects_v2(Bucket="dvc-store")["Contents"][0]["Key"])
