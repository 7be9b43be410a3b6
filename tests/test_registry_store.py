"""Model registry (folder and a real S3 server) and the promotion rule."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.common.errors import EXIT_TRANSIENT
from pipeline.promotion.decide import class_change
from pipeline.registry import ChampionChanged, open_registry
from tests.support.badimages import good_png
from tests.support.gate import passed_gate
from tests.support.s3server import ThrottlingProxy, make_client

ROOT = Path(__file__).resolve().parents[1]


def _model_dir(tmp_path: Path, name: str, payload: bytes) -> Path:
    model = tmp_path / name
    model.mkdir()
    (model / "model.pt").write_bytes(payload)
    (model / "card.json").write_text('{"model": "toy"}')
    return model


def _exercise(registry, tmp_path: Path) -> None:
    assert registry.champion() is None and registry.versions() == []
    registry.register("20260101-000000-a", _model_dir(tmp_path, "a", b"A"), {"decision": "promoted"})
    registry.set_champion("20260101-000000-a", {"test_accuracy": 0.9}, token=None)
    registry.register("20260102-000000-b", _model_dir(tmp_path, "b", b"B"), {"decision": "kept champion"})
    assert registry.versions() == ["20260101-000000-a", "20260102-000000-b"]
    champion = registry.champion()
    assert {k: champion[k] for k in ("version", "test_accuracy", "move", "previous", "action")} == {
        "version": "20260101-000000-a", "test_accuracy": 0.9, "move": 1, "previous": None, "action": "promote"}
    assert champion["set_by"]["user"] and [e["version"] for e in registry.history()] == ["20260101-000000-a"]
    assert registry.card("20260102-000000-b")["decision"] == "kept champion"
    local = registry.model_dir("20260101-000000-a", tmp_path / "scratch")
    assert (local / "model.pt").read_bytes() == b"A" and (local / "decision.json").is_file()
    with pytest.raises(FileExistsError, match="already registered"):
        registry.register("20260101-000000-a", _model_dir(tmp_path, "c", b"C"), {})


def test_folder_registry(tmp_path):
    registry = open_registry("reg", tmp_path)
    _exercise(registry, tmp_path)
    assert (tmp_path / "reg" / "champion.json").is_file()
    leftovers = [p for p in (tmp_path / "reg").rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert not leftovers  # no temp files; .lock is the promoters' lock file


def test_folder_registry_fsyncs_each_file_before_the_rename_and_the_folders_after(tmp_path, monkeypatch):
    import os

    version = tmp_path / "reg" / "versions" / "20260101-000000-a"
    synced: dict[tuple[int, int], bool] = {}  # (device, inode) -> did the version folder exist yet
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.setdefault((info.st_dev, info.st_ino), version.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    registry = open_registry("reg", tmp_path)
    model = _model_dir(tmp_path, "a", b"A")
    (model / "sub").mkdir()
    (model / "sub" / "model.onnx").write_bytes(b"onnx")
    registry.register("20260101-000000-a", model, {"decision": "promoted"})
    registry.set_champion("20260101-000000-a", {"test_accuracy": 0.9}, token=None)

    def key(path: Path) -> tuple[int, int]:
        info = path.stat()
        return info.st_dev, info.st_ino

    # rename keeps the inode: what was synced under its temporary name is the registered file
    for path in [version, *version.rglob("*")]:
        assert synced.get(key(path)) is False, f"{path} not fsynced before the rename"
    for folder in (version.parent, tmp_path / "reg"):
        assert synced.get(key(folder)) is True, f"{folder} not fsynced after the rename into it"
    assert key(tmp_path / "reg" / "champion.json") in synced


def test_s3_registry(tmp_path, s3_endpoint, monkeypatch):
    make_client(s3_endpoint).create_bucket(Bucket="models")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    _exercise(open_registry("s3://models/tlops/registry", tmp_path), tmp_path)
    keys = {o["Key"] for o in make_client(s3_endpoint).list_objects_v2(Bucket="models")["Contents"]}
    assert "tlops/registry/champion.json" in keys
    assert "tlops/registry/versions/20260101-000000-a/model.pt" in keys


CHANGE = "the candidate's classes differ from the champion's: it adds ['fox'] and drops ['cat']"


def test_class_change_names_added_and_dropped_classes():
    assert class_change(["cat", "dog"], ["dog", "cat"]) is None  # order is not a change of task
    assert class_change(["cat", "dog"], ["dog", "fox"]) == CHANGE


def test_forged_champion_records_and_version_names_are_refused(tmp_path):
    registry = open_registry("reg", tmp_path)
    registry.register("20260101-000000-a", _model_dir(tmp_path, "a", b"A"), {})
    with pytest.raises(ValueError, match=r"version: '\.\./\.\./etc' is not a run name"):
        registry.register("../../etc", _model_dir(tmp_path, "b", b"B"), {})
    (tmp_path / "reg" / "champion.json").write_text(
        '{"version": "20260101-000000-a", "run_tag": "run-x; touch /tmp/pwned"}')
    with pytest.raises(ValueError, match=r"reg/champion.json: 'run-x; touch /tmp/pwned' is not a run tag"):
        registry.champion()  # it would reach `git worktree add ... <run_tag>` in the drift-check flow
    (tmp_path / "reg" / "champion.json").write_text('{"version": "../outside", "run_tag": null}')
    with pytest.raises(ValueError, match="'../outside' is not a run name"):
        registry.champion()


def test_an_s3_registry_key_with_dotdot_is_refused(tmp_path, s3_endpoint, monkeypatch):
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket="models")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    registry = open_registry("s3://models/reg", tmp_path)
    registry.register("20260101-000000-a", _model_dir(tmp_path, "a", b"A"), {})
    client.put_object(Bucket="models", Key="reg/versions/20260101-000000-a/../../../escaped.txt", Body=b"x")
    with pytest.raises(ValueError, match=r"escaped.txt: refused: a registry key with '\.\.'"):
        registry.model_dir("20260101-000000-a", tmp_path / "scratch")
    assert not list(tmp_path.rglob("escaped.txt"))


def _card_dir(tmp_path: Path, name: str, sha: str) -> Path:
    model = tmp_path / name
    model.mkdir()
    (model / "model.pt").write_bytes(sha.encode())
    (model / "card.json").write_text(json.dumps({"state_dict_sha256": sha}))
    return model


def _exercise_swap(registry, tmp_path: Path) -> None:
    registry.register("20260101-000000-a", _card_dir(tmp_path, "a", "a" * 64), {"n": 1})
    registry.register("20260101-000000-a", _card_dir(tmp_path, "a2", "a" * 64), {"n": 2})  # a rerun: accepted
    assert registry.card("20260101-000000-a") == {"n": 2}
    with pytest.raises(FileExistsError, match="already registered with another model"):
        registry.register("20260101-000000-a", _card_dir(tmp_path, "b", "b" * 64), {})
    _, empty = registry.champion_and_token()
    registry.set_champion("20260101-000000-a", {"test_accuracy": 0.9}, empty)
    with pytest.raises(ChampionChanged):  # read before that promotion: stale
        registry.set_champion("20260101-000000-a", {"test_accuracy": 0.1}, empty)
    champion, token = registry.champion_and_token()
    assert champion["test_accuracy"] == 0.9
    registry.set_champion("20260101-000000-a", {"test_accuracy": 0.95}, token)
    assert registry.champion()["test_accuracy"] == 0.95


def test_champion_swaps_are_conditional_and_registering_is_idempotent(tmp_path, s3_endpoint, monkeypatch):
    (tmp_path / "folder").mkdir()
    _exercise_swap(open_registry("reg", tmp_path / "folder"), tmp_path / "folder")
    make_client(s3_endpoint).create_bucket(Bucket="cas")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    (tmp_path / "s3").mkdir()
    _exercise_swap(open_registry("s3://cas/reg", tmp_path / "s3"), tmp_path / "s3")  # If-Match / If-None-Match


_RACER = """
import sys
from pathlib import Path
from pipeline.registry import ChampionChanged, open_registry
registry = open_registry(sys.argv[1], Path("."))
for _ in range(int(sys.argv[2])):
    while True:
        champion, token = registry.champion_and_token()
        count = champion["count"] if champion else 0
        try:
            registry.set_champion("20260101-000000-a", {"count": count + 1}, token)
            break
        except ChampionChanged:
            continue
"""


def test_concurrent_promoters_never_lose_an_update(tmp_path):
    # four processes each read the champion and write it back 25 times: without the lock and the
    # compare-and-swap, interleaved read-modify-writes lose increments
    open_registry(str(tmp_path / "reg"), tmp_path).register("20260101-000000-a", _model_dir(tmp_path, "a", b"A"), {})
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / "reg"), "25"], cwd=ROOT)
             for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    champion = open_registry(str(tmp_path / "reg"), tmp_path).champion()
    assert champion["count"] == 100 and champion["move"] == 100


def _objects(client, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.mark.slow
def test_a_stopped_s3_registry_is_transient_for_promote_and_the_champion_stays(tmp_path, s3_endpoint, monkeypatch,
                                                                               capsys):
    from flows.retrain import RETRY_POLICY
    from pipeline.models import LoadedModel

    monkeypatch.chdir(ROOT)  # the CLI finds dvc.yaml from here
    for i in range(12):  # a tiny dataset and an untrained-head model: promote compares on its test split
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png").write_bytes(good_png(i, 32))
    assert main(["ingest", "--dataset", str(tmp_path / "dataset"), "--metrics", str(tmp_path / "i.json"),
                 "--report-dir", str(tmp_path / "ri"), "--set", f"source.location={tmp_path / 'imgs'}",
                 "--set", "ingest.test_fraction=0.4"]) == 0
    LoadedModel.pretrained("efficientnet_lite0", 2, 32, classes=["c0", "c1"]).save(tmp_path / "model", {})
    (tmp_path / "evaluation.json").write_text(json.dumps({"verdict": "positive", "recommended_model": "finetuned"}))
    (tmp_path / "card.md").write_text("# model card")
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket="down")
    server = ThrottlingProxy(s3_endpoint, failures=0)  # the registry's server, stopped below
    with server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        registry = open_registry("s3://down/reg", tmp_path)
        registry.register("20260101-000000-a", _card_dir(tmp_path, "champion", "a" * 64), {"decision": "promoted"})
        registry.set_champion("20260101-000000-a", {"test_accuracy": 0.9}, token=None)
    before = _objects(client, "down")
    monkeypatch.setattr("pipeline.stages.promote.run_identity",
                        lambda root: {"run_name": "20260102-000000-b", "run_tag": None})
    argv = ["promote", "--dataset", str(tmp_path / "dataset"), "--model", str(tmp_path / "model"),
            "--baseline", str(tmp_path / "model"), "--evaluation", str(tmp_path / "evaluation.json"),
            "--decision", str(tmp_path / "decision.json"), "--validation", str(passed_gate(tmp_path)),
            "--exports", str(tmp_path / "model"), "--model-card", str(tmp_path / "card.md"),
            "--set", "common.image_size=32", "--set", "promote.registry=s3://down/reg"]
    capsys.readouterr()
    # botocore still retries every call on the stopped endpoint, without its backoff's sleeps (~1 min in all)
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0.0)
    for _ in range(1 + RETRY_POLICY["retries"]):  # the first attempt and every retry the flow gives the stage
        assert main(argv) == EXIT_TRANSIENT  # exit 75: the flow's retry condition takes it as transient
        lines = capsys.readouterr().err.strip().splitlines()
        assert re.match(rf"tlops promote: transient error \(worth a retry\): s3://down/reg/\S+: the S3 endpoint "
                        rf"{server.url} cannot be reached", lines[-1]), lines[-1]  # names the object and the endpoint
        assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "decision.json").exists()
    assert _objects(client, "down") == before  # the server back: champion pointer and files as they were
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert open_registry("s3://down/reg", tmp_path).champion()["version"] == "20260101-000000-a"
