"""A flow run is one job on its machine (pipeline/common/threads.py): its stages, started by `dvc repro` in the
run's worktree, take their share of the cores beside another job (a drift check beside a retrain), belong to
the run's job rather than counting again, and the job ends with the run. For real in Prefect's test harness.

The project's chain is one stage that records what it was given, then fails as bad input would (no retry).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from pipeline.common.threads import JOB_ENV, JOBS_DIR_ENV, THREADS_ENV, machine_cores
from tests.conftest import copy_project
from tests.support.prefect_db import harness_on_copy

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock")]
RECORD = ("import json, os, sys, torch; from pipeline.common.threads import resolve, running_jobs; "
          "json.dump({'job': os.environ.get('TLOPS_JOB'), 'jobs': running_jobs(), 'threads': resolve(None).threads}, "
          "open(os.environ['SHARE_RECORD'], 'w')); sys.exit(2)")
HOLDER = textwrap.dedent("""\
    import time
    from pipeline.common.threads import job
    with job("a drift check"):
        print("ready", flush=True)
        time.sleep(300)
""")


def test_a_retrain_run_and_its_stages_are_one_job_sharing_the_cores(tmp_path, monkeypatch, prefect_db):
    project = copy_project(tmp_path / "project")
    stage = {"cmd": f'{sys.executable} -c "{RECORD}"'}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": stage}}))
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url",
                    str(tmp_path / "remote")], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "a recording stage"],
                   cwd=project, check=True)
    jobs = tmp_path / "jobs"
    record = tmp_path / "share.json"
    monkeypatch.setenv(JOBS_DIR_ENV, str(jobs))
    monkeypatch.setenv("SHARE_RECORD", str(record))
    for name in (THREADS_ENV, JOB_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(project)
    other = subprocess.Popen([sys.executable, "-c", HOLDER], env={**os.environ, "PYTHONPATH": str(project)},
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        with harness_on_copy(prefect_db):
            from flows.parameters import RetrainParameters
            from flows.retrain import retrain

            state = retrain(RetrainParameters(), reason="threads", return_state=True)
        assert state.is_failed() and "stage ingest failed (exit 2)" in str(state.message)
        seen = json.loads(record.read_text())
        # the stage belongs to the run's job (registered by the flow, not by itself): two jobs, half the cores
        assert seen["job"] and seen["job"].startswith(str(jobs)) and seen["jobs"] == 2
        assert seen["threads"] == max(1, machine_cores() // 2)
        assert len(list(jobs.glob("*.lock"))) == 1 and JOB_ENV not in os.environ  # the run's job ended with it
    finally:
        other.kill()
        other.wait()
