"""The tlops CLI: usage, clear errors, params printing, status against a real DVC project."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.common.io import write_bytes
from pipeline.stages import STAGES


def test_usage_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for spec in STAGES:
        assert spec.name in out


def test_version_prints_the_installed_version_through_the_console_script():
    tlops = os.path.join(os.path.dirname(sys.executable), "tlops")
    for flag in ("--version", "-V"):
        done = subprocess.run([tlops, flag], capture_output=True, text=True, check=True)
        name, version = done.stdout.split()
        assert (name, done.stderr) == ("tlops", "")
        assert version.split(".")[0].isdigit(), done.stdout


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


def _fail_with(monkeypatch, error: BaseException) -> None:
    """Make the freeze stage raise ``error`` from this file: code outside pipeline/, like a library."""
    from pipeline.stages import freeze

    def run(params, args):
        raise error

    monkeypatch.setattr(freeze, "run", run)


def test_a_library_error_ends_in_one_line_naming_its_type_and_place(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    _fail_with(monkeypatch, KeyError(1))  # what Evidently raised on string labels: once printed as "error: 1"
    assert main(["freeze"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tlops freeze: internal error: KeyError: 1 (raised in tests/test_cli_commands.py:")


def test_our_own_checks_stay_bad_input_with_their_sentence(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    assert main(["freeze", "--selection", "nowhere.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlops freeze: error: ") and "Traceback" not in err[0]


def test_a_failed_stage_leaves_its_previous_outputs_whole(project, monkeypatch):
    monkeypatch.chdir(project)
    plan, metrics = project / "results" / "freeze" / "freeze_plan.json", project / "results" / "freeze" / "metrics.json"
    plan.parent.mkdir(parents=True)
    plan.write_text("previous plan")
    metrics.write_text("previous metrics")
    from pipeline.stages import freeze

    def half_then_fail(params, args):
        args.plan.write_text("new plan")  # one output written, then the stage dies
        raise OSError("No space left on device")

    monkeypatch.setattr(freeze, "run", half_then_fail)
    assert main(["freeze"]) == 1
    assert plan.read_text() == "previous plan" and metrics.read_text() == "previous metrics"
    assert not list(plan.parent.glob(".tlops-previous*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs where the machine lets the test mount one (root, no seccomp), else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_old_outputs_stay(project, monkeypatch, capsys, small_disk):
    monkeypatch.chdir(project)
    from pipeline.stages import freeze

    plan_dir = small_disk or project / "results" / "freeze"
    plan, metrics = plan_dir / "freeze_plan.json", plan_dir / "metrics.json"
    plan_dir.mkdir(parents=True, exist_ok=True)
    plan.write_text("previous plan")
    metrics.write_text("previous metrics")

    def fill_the_disk(params, args):
        if small_disk is None:  # no tmpfs here: the write fails the way a full disk makes it fail
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args.plan))
        write_bytes(args.plan, b"x" * 2**20)  # 1 MiB into 64 KiB through the stages' write helper: a real ENOSPC
        return {}

    monkeypatch.setattr(freeze, "run", fill_the_disk)
    capsys.readouterr()
    assert main(["freeze", "--plan", str(plan), "--metrics", str(metrics)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tlops freeze: error: no space left on the device writing {plan}; free space and rerun "
                   "(the stage's previous outputs are kept)"]
    assert plan.read_text() == "previous plan" and metrics.read_text() == "previous metrics"
