"""`tlops registry`: list, show, history, promote (through the blessing, or forced with a reason), aliases and
rollback, on real classifiers; and rollbacks racing promotions in real processes on the folder and S3 registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_REFUSED
from pipeline.registry import open_registry
from tests.support.heads import train_head
from tests.support.s3server import make_client
from tests.support.promotion import ingest_folder, photo_class_folder, run_promote

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys, registry: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["registry", "--set", f"promote.registry={registry}", "--set", "common.image_size=32",
                 "--set", "promote.min_eval_per_class=5", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_list_show_promote_force_alias_rollback_and_history(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the CLI finds dvc.yaml from here
    monkeypatch.setenv("TLOPS_USER", "ada")
    registry = tmp_path / "registry"
    dataset = ingest_folder(photo_class_folder(tmp_path / "imgs", {"rocket": ["rocket"], "gravel": ["gravel"],
                                                  "coffee": ["coffee"]}, 40), tmp_path)
    first, second = "20260101-000000-first", "20260102-000000-second"
    assert run_promote(monkeypatch, tmp_path, dataset, train_head(dataset, tmp_path / "m0", seed=0), first,
                    registry)["promoted"] is True
    assert run_promote(monkeypatch, tmp_path, dataset, train_head(dataset, tmp_path / "m1", seed=1), second,
                    registry)["decision"] == "kept champion"

    code, out, _ = _cli(capsys, registry, "list")
    assert code == 0 and first in out and second in out and "kept champion" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith(first)] == ["champion"]
    code, out, _ = _cli(capsys, registry, "show", second)
    shown = json.loads(out)
    assert shown["decision"]["decision"] == "kept champion" and shown["aliases"] == []
    assert {c["check"] for c in shown["decision"]["blessing"]["checks"]} >= {"evidence", "references", "gain"}

    # a manual promotion goes through the blessing: as good is not better
    code, _, err = _cli(capsys, registry, "promote", second)
    assert code == EXIT_REFUSED and "refused: " + second + ": kept champion" in err
    assert open_registry(str(registry), tmp_path).champion()["version"] == first
    code, _, err = _cli(capsys, registry, "promote", second, "--force")
    assert code == EXIT_BAD_INPUT and "--reason" in err
    code, out, _ = _cli(capsys, registry, "promote", second, "--force", "--reason", "ops: pin the seed-1 model")
    assert code == 0 and f"champion: {first} -> {second}" in out
    code, out, _ = _cli(capsys, registry, "promote", first, "--alias", "challenger")  # a label: no blessing
    assert code == 0 and f"challenger: None -> {first}" in out
    assert open_registry(str(registry), tmp_path).aliases() == {"champion": second, "challenger": first}

    code, out, _ = _cli(capsys, registry, "rollback", "--reason", "forced one misbehaves")
    assert code == 0 and f"{second} -> {first}" in out
    code, _, err = _cli(capsys, registry, "rollback", "--to", "20260103-000000-never")
    assert code == EXIT_BAD_INPUT and "was never the champion" in err
    code, _, err = _cli(capsys, registry, "promote", "20260109-000000-nope")
    assert code == EXIT_BAD_INPUT and "is not registered" in err

    events = open_registry(str(registry), tmp_path).history()
    champion = [e for e in events if e["alias"] == "champion"]
    assert [(e["action"], e["previous"], e["version"], e["forced"]) for e in champion] == [
        ("promote", None, first, False), ("force-promote", first, second, True), ("rollback", second, first, False)]
    assert champion[1]["reason"] == "ops: pin the seed-1 model" and champion[2]["reason"] == "forced one misbehaves"
    assert all(e["by"]["user"] == "ada" for e in events) and champion[0]["reason"].startswith("promoted: ")
    code, out, _ = _cli(capsys, registry, "history")
    assert code == 0 and len(out.strip().splitlines()) == 1 + len(events) and "force-promote" in out


_PROMOTER = """
import random, sys
from pathlib import Path
from pipeline.registry import ChampionChanged, open_registry
registry, done = open_registry(sys.argv[1], Path(".")), 0
versions = sys.argv[3].split(",")
for i in range(int(sys.argv[2])):
    while True:
        champion, token = registry.champion_and_token()
        target = random.choice([v for v in versions if v != champion["version"]])
        try:
            registry.set_champion(target, {}, token, reason=f"racer {i}")
            done += 1
            break
        except ChampionChanged:
            continue
print(done)
"""

_ROLLER = """
import sys
from pathlib import Path
from pipeline.common.errors import TransientError
from pipeline.promotion.operations import rollback
from pipeline.registry import open_registry
registry, done = open_registry(sys.argv[1], Path(".")), 0
for _ in range(1000):  # until it has landed its rollbacks: racing two promoters, most attempts lose
    if done == int(sys.argv[2]):
        break
    try:
        rollback(registry, reason="roll")
        done += 1
    except TransientError:  # the champion moved while rolling back: refused, nothing written
        pass
print(done)
"""


def _race(location: str, tmp_path: Path, env: dict[str, str]) -> None:
    registry = open_registry(location, tmp_path)
    versions = [f"2026010{i}-000000-v{i}" for i in range(1, 5)]
    for i, version in enumerate(versions):
        model = tmp_path / f"model-{i}"
        model.mkdir(exist_ok=True)
        (model / "model.pt").write_bytes(version.encode())
        (model / "card.json").write_text(json.dumps({"state_dict_sha256": f"{i}" * 64}))
        registry.register(version, model, {"decision": "promoted"})
    registry.set_champion(versions[0], {}, None)
    registry.set_champion(versions[1], {}, registry.champion_and_token()[1])
    run_env = {**os.environ, **env}
    procs = [subprocess.Popen([sys.executable, "-c", _PROMOTER, location, "15", ",".join(versions)], cwd=ROOT,
                              env=run_env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    procs.append(subprocess.Popen([sys.executable, "-c", _ROLLER, location, "5"], cwd=ROOT, env=run_env,
                                  stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    moves = 2 + sum(int(out.strip()) for out, _ in outs)
    assert int(outs[2][0].strip()) == 5  # every rollback landed in the end, however often a promotion beat it
    champion = registry.champion()
    assert champion["version"] in versions and champion["move"] == moves  # one champion, every move counted
    events = sorted((e for e in registry.history() if e["alias"] == "champion"), key=lambda e: e["move"])
    assert [e["move"] for e in events] == list(range(1, moves + 1))  # no event lost, none twice
    assert all(b["previous"] == a["version"] for a, b in zip(events, events[1:]))  # one unbroken chain
    assert events[-1]["version"] == champion["version"]
    assert {e["action"] for e in events} == {"promote", "rollback"}


@pytest.mark.slow
def test_rollbacks_racing_promotions_leave_one_champion_and_an_unbroken_history(tmp_path, s3_endpoint):
    (tmp_path / "folder").mkdir()
    _race(str(tmp_path / "folder" / "registry"), tmp_path / "folder", {})
    make_client(s3_endpoint).create_bucket(Bucket="race")
    (tmp_path / "s3").mkdir()
    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    try:
        _race("s3://race/registry", tmp_path / "s3", {"AWS_ENDPOINT_URL": s3_endpoint})
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
