"""The tlops CLI: usage, clear errors, params printing, status against a real DVC project."""

from __future__ import annotations

import subprocess
import sys

from pipeline.cli import main
from pipeline.stages import STAGES


def test_usage_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for spec in STAGES:
        assert spec.name in out


def test_unknown_command_is_one_clear_line(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tlops trian: error: unknown stage 'trian' (stages: ingest,")


def test_bad_override_is_reported(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    assert main(["params", "--set", "common.seed=-3"]) == 2
    assert "common.seed = -3: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_params_prints_resolved_yaml(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    assert main(["params", "--set", "common.image_size=32"]) == 0
    assert "image_size: 32" in capsys.readouterr().out


def test_status_lists_every_stage(project):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status"], cwd=project, check=True,
                         capture_output=True, text=True).stdout
    for spec in STAGES:
        assert spec.name in out
