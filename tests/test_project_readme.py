"""The README's CLI commands work as written in a fresh shell: a clean environment (no venv on PATH), the
block's own first line activating the environment. They used to fail with "tlops: not found" (exit 127)."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.conftest import ROOT

# `dvc repro` runs the whole chain: `dvc status` reads the same graph; DVC runs each stage with this PATH,
# which the last line checks finds tlops; `tlops predict` needs a trained champion, `tlops serve` runs until stopped
_SAFE = {"dvc repro": "dvc status"}


def _cli_block() -> list[str]:
    """The indented command lines of the README's "## The CLI" section, comments stripped."""
    section = ROOT.joinpath("README.md").read_text().split("## The CLI", 1)[1].split("\n## ", 1)[0]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in section.splitlines() if line.startswith("    ")]
    return [_SAFE.get(c, c) for c in commands
            if c and "<" not in c and not c.startswith(("tlops predict", "tlops serve"))]


def test_the_cli_block_runs_in_a_fresh_shell(tmp_path):
    commands = _cli_block()
    assert commands[0] == "source .venv/bin/activate" and "tlops --help" in commands
    # a login-like environment: the system PATH only, no VIRTUAL_ENV, nothing of this test process
    env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    script = "set -e\n" + "\n".join(commands) + "\ncommand -v tlops dvc prefect\n"
    proc = subprocess.run([shutil.which("bash") or "/bin/bash", "--noprofile", "--norc", "-c", script], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "usage: tlops <command>" in proc.stdout and "predict" in proc.stdout
    assert f"{ROOT}/.venv/bin/tlops" in proc.stdout


def test_without_activation_the_commands_are_not_found(tmp_path):
    """The check above is not vacuous: the same shell without the activation line cannot find tlops."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    proc = subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", "tlops --help"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 127
