"""Model registry (folder and a real S3 server) and the promotion rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stages.promote import class_change, promotion_decision
from pipeline.registry import ChampionChanged, open_registry
from tests.support.s3server import make_client

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
    assert registry.champion() == {"version": "20260101-000000-a", "test_accuracy": 0.9}
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


def test_s3_registry(tmp_path, s3_endpoint, monkeypatch):
    make_client(s3_endpoint).create_bucket(Bucket="models")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    _exercise(open_registry("s3://models/tlops/registry", tmp_path), tmp_path)
    keys = {o["Key"] for o in make_client(s3_endpoint).list_objects_v2(Bucket="models")["Contents"]}
    assert "tlops/registry/champion.json" in keys
    assert "tlops/registry/versions/20260101-000000-a/model.pt" in keys


CHANGE = "the candidate's classes differ from the champion's: it adds ['fox'] and drops ['cat']"


@pytest.mark.parametrize(
    ("accuracy", "champion", "champion_accuracy", "same", "change", "allow", "promoted", "why"),
    [
        (0.90, None, None, False, None, False, True, "no champion yet"),
        (0.95, {"version": "v1"}, 0.94, False, None, False, True, "beats the champion's 0.9400"),
        (0.942, {"version": "v1"}, 0.94, False, None, False, False,
         "does not beat the champion's 0.9400 by the margin"),
        (0.99, {"version": "v1"}, 0.94, True, None, False, False, "already the champion (v1)"),
        (0.99, {"version": "v1"}, None, False, CHANGE, False, False, "refused: " + CHANGE),
        (0.50, {"version": "v1"}, None, False, CHANGE, True, True, "task change allowed by promote.allow_task_change"),
    ],
)
def test_promotion_rule(accuracy, champion, champion_accuracy, same, change, allow, promoted, why):
    # the candidate is already the run's better model (the evaluation's recommendation): only the champion matters
    decided, reason = promotion_decision(accuracy, champion, champion_accuracy, same, 0.005, change, allow)
    assert decided is promoted
    assert why in reason


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
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / "reg"), "25"], cwd=ROOT)
             for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert open_registry(str(tmp_path / "reg"), tmp_path).champion()["count"] == 100
