"""The stages that read no model start without torch: importing torch, torchvision and timm costs a stage
process 2-4 s, several times ingest's or card's own work on a small dataset (issue 24). The thread share
(pipeline/common/threads.py) still reaches torch, whether it was loaded before the share or after."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.common.threads import LIBRARY_ENV, THREADS_ENV
from tests.conftest import ROOT

# what `tlops <stage>` loads before the stage runs (the CLI, the stage module), then the block it runs in under its
# thread share; prints the heavy libraries loaded and what the block said
PROBE = """
import sys
from pipeline.cli import _run_stage
from pipeline.common.threads import applied
from pipeline.stages import get_stage
get_stage(sys.argv[1]).load()
loaded = sorted(name for name in ("torch", "torchvision", "timm") if name in sys.modules)
with applied(1):
    said = eval(sys.argv[2])
print(loaded, said)
"""


def _probe(stage: str, block: str = "None") -> str:
    # torch's own default, one thread per core, unless the share sets it (the tests' workers set OMP_NUM_THREADS)
    env = {k: v for k, v in os.environ.items() if k not in (*LIBRARY_ENV, THREADS_ENV)}
    probe = subprocess.run([sys.executable, "-c", PROBE, stage, block], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


@pytest.mark.parametrize("stage", ["ingest", "validate", "card"])
def test_a_stage_that_reads_no_model_never_imports_torch(stage):
    assert _probe(stage) == "[] None"


def test_torch_gets_the_share_whether_loaded_before_it_or_after():
    loaded, threads = _probe("finetune", "__import__('torch').get_num_threads()").rsplit(" ", 1)
    assert "'torch'" in loaded and threads == "1"
    assert _probe("ingest", "__import__('torch').get_num_threads()") == "[] 1"  # from OMP_NUM_THREADS


def test_registry_views_and_rollback_start_without_torch(tmp_path):
    """`tlops registry list | show | history | rollback` read JSON records: only a blessing (`promote`) loads
    torch and the models (they took 5 s to list a registry; issue 24)."""
    code = ("import sys; from pipeline.cli import main; "
            f"codes = [main(['registry', '--set', 'promote.registry={tmp_path}', *a.split()]) "
            "for a in ('list', 'history', 'show x', 'rollback')]; "
            "print(codes, sorted(n for n in ('torch', 'torchvision', 'timm') if n in sys.modules))")
    probe = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "[0, 0, 2, 2] []", probe.stderr  # show, rollback: bad input
    assert "'x' is not a run name" in probe.stderr and "there is no champion to roll back" in probe.stderr


def test_a_flow_runs_process_starts_without_the_computing_libraries():
    """Each flow run is a process of its own that imports the flow module, then starts stage processes: it only
    shows results (a blessing's table among them), so scipy (0.8 s), torch and the rest stay out of it."""
    heavy = ("torch", "torchvision", "timm", "scipy", "sklearn", "pandas", "evidently", "great_expectations")
    code = f"import sys, flows.retrain, flows.drift_check; print(sorted(n for n in {heavy!r} if n in sys.modules))"
    probe = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
