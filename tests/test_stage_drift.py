"""`tlops drift` end to end on a small real chain: ingest -> shift -> profile -> a real model -> drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.sources.digits import DigitsSource
from tests.support.drift_chain import build_chain, run_drift


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """120 real digits at 32 px as a folder; the shift set: heavy noise on the test split (plus clean copies)."""
    work = tmp_path_factory.mktemp("drift")
    for i, record in zip(range(120), DigitsSource(32).records()):
        (work / "imgs" / record.label).mkdir(parents=True, exist_ok=True)
        (work / "imgs" / record.label / f"{i}.png").write_bytes(record.data)
    return build_chain(work, work / "imgs")


def _drift(chain: dict[str, Path], out: Path) -> int:
    return run_drift(chain, out, outliers=6)


@pytest.mark.slow
def test_drift_stage_writes_decision_reports_and_a_workspace_snapshot(chain, tmp_path):
    assert _drift(chain, tmp_path / "run1") == 0
    summary = json.loads((tmp_path / "run1" / "drift.json").read_text())
    assert summary["drift_detected"] is True  # half the current set is severity-5 noise
    assert set(summary["p_values"]) == {"mmd", "ks_softmax"} and "mmd" in summary["effect_sizes"]
    groups = {(g["corruption"], g["severity"]): g for g in summary["groups"]}
    assert groups[("gaussian_noise", 5)]["drift_detected"] is True
    assert summary["accuracy_current"] is not None and len(summary["most_unlike"]) == 6
    distances = [m["knn_distance"] for m in summary["most_unlike"]]
    assert distances == sorted(distances, reverse=True)  # the ranking itself is tested in test_drift_outliers
    for path in summary["reports"].values():
        assert Path(path).is_file(), path
    assert summary["workspace"]["snapshot_id"]  # two runs into one project: tests/test_drift_report.py
    assert "DRIFT DETECTED" in Path(summary["reports"]["html"]).read_text()


def test_missing_profile_is_named(chain, tmp_path, capsys):
    chain = {**chain, "profile": tmp_path / "nope.parquet"}
    assert _drift(chain, tmp_path) == 2
    assert "nope.parquet" in capsys.readouterr().err
