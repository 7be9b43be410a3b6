"""The threads a run computes with (pipeline/common/threads.py): the cores it is given, shared among the jobs
in progress on the machine, applied to torch, the BLAS/OpenMP pools and the processes a stage starts.

Every test counts jobs in a folder of its own (``TLOPS_JOBS_DIR``): other tlops work on the machine is not
counted. Jobs are held by real processes, so what is counted is the kernel's locks, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.common import threads
from pipeline.common.threads import JOB_ENV, JOBS_DIR_ENV, THREADS_ENV, machine_cores

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and /proc are Linux's here")
ROOT = Path(__file__).resolve().parents[1]
CORES = machine_cores()
# a process that registers one job and holds it until killed; it prints "ready" once registered
HOLDER = textwrap.dedent("""\
    import sys, time
    from pipeline.common.threads import job
    with job("test holder"):
        print("ready", flush=True)
        time.sleep(300)
""")


@pytest.fixture
def jobs_dir(tmp_path, monkeypatch):
    """A private jobs folder, and an environment without a share or a job inherited from whoever runs pytest."""
    folder = tmp_path / "jobs"
    monkeypatch.setenv(JOBS_DIR_ENV, str(folder))
    for name in (THREADS_ENV, JOB_ENV, *threads.LIBRARY_ENV):
        monkeypatch.delenv(name, raising=False)
    return folder


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def hold(jobs_dir):
    """Start processes that each hold one job; every one is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(count: int = 1) -> list[subprocess.Popen]:
        for _ in range(count):
            proc = subprocess.Popen([sys.executable, "-c", HOLDER], env=_env(), stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            procs.append(proc)
        return procs[-count:]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (torch's thread pools are per process); it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(**env), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_alone_a_job_takes_every_core_and_beside_others_its_share(jobs_dir, hold):
    assert threads.running_jobs() == 1  # this process, about to start one
    assert threads.resolve(None).threads == CORES and threads.resolve(None).automatic
    hold(2)
    assert threads.running_jobs() == 3
    share = threads.resolve(None)
    assert share.threads == max(1, CORES // 3) and "shared by 3 job(s)" in share.reason
    with threads.job("this test"):  # registered, it counts once, not twice
        assert threads.running_jobs() == 3 and os.environ[JOB_ENV].startswith(str(jobs_dir))
    assert JOB_ENV not in os.environ and len(list(jobs_dir.glob("*.lock"))) == 2


def test_a_job_killed_outright_stops_counting_and_its_file_goes(jobs_dir, hold):
    first, second = hold(2)
    assert threads.running_jobs() == 3
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert threads.running_jobs() == 2
    assert len(list(jobs_dir.glob("*.lock"))) == 1  # the dead job's file was removed on the way
    first.kill()
    first.wait()
    assert threads.running_jobs() == 1 and not list(jobs_dir.glob("*.lock"))


def test_the_processes_of_a_job_do_not_count_again(jobs_dir, hold):
    hold(1)
    with threads.job("a flow run"):
        child = _python("""
            import json
            from pipeline.common import threads
            with threads.job("its stage"):  # inside a job: nothing registered
                print(json.dumps({"jobs": threads.running_jobs(), "threads": threads.resolve(None).threads}))
            """)
        assert len(list(jobs_dir.glob("*.lock"))) == 2
    assert child == {"jobs": 2, "threads": max(1, CORES // 2)}


@pytest.mark.parametrize(("env", "setting", "want", "reason"), [
    ({THREADS_ENV: "3", "OMP_NUM_THREADS": "5"}, 7, 3, "TLOPS_THREADS = 3"),  # a parent's share beats all
    ({"OMP_NUM_THREADS": "5"}, 7, 7, "orchestrate.threads = 7"),
    ({"OMP_NUM_THREADS": "5"}, None, 5, "OMP_NUM_THREADS = 5"),
    ({"OMP_NUM_THREADS": "zero"}, None, CORES, "shared by 1 job(s)"),  # not a count: ignored
])
def test_which_setting_wins(jobs_dir, monkeypatch, env, setting, want, reason):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    share = threads.resolve(setting)
    assert share.threads == want and reason in share.reason
    assert share.automatic == (reason.startswith("shared"))


def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs on the parent: 2 cores
    (v2 / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cgroup2").write_text("0::/job/step\n")
    assert threads._cgroup_quota(v2, tmp_path / "cgroup2") == 2
    v1 = tmp_path / "v1" / "cpu,cpuacct" / "pod"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cgroup1").write_text("4:memory:/pod\n3:cpu,cpuacct:/pod\n")
    assert threads._cgroup_quota(tmp_path / "v1", tmp_path / "cgroup1") == 3
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert threads._cgroup_quota(tmp_path / "v1", tmp_path / "cgroup1") is None
    assert threads._cgroup_quota(tmp_path, tmp_path / "missing") is None


def test_a_share_reaches_torch_the_blas_pools_and_child_processes_and_is_undone_after(jobs_dir):
    seen = _python("""
        import json, os, subprocess, sys
        import numpy, torch
        from threadpoolctl import threadpool_info
        from pipeline.common.threads import run_threads
        before = torch.get_num_threads()
        with run_threads(1, "test") as share:
            child = subprocess.run([sys.executable, "-c", "import os, json, torch; print(json.dumps("
                                    "[torch.get_num_threads(), os.environ['OMP_NUM_THREADS']]))"],
                                   capture_output=True, text=True).stdout
            inside = {"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                      "pools": sorted({p["num_threads"] for p in threadpool_info()}), "child": json.loads(child),
                      "env": [os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TLOPS_THREADS")]}
        after = {"torch": torch.get_num_threads(), "env": os.environ.get("OMP_NUM_THREADS")}
        print(json.dumps({"before": before, "inside": inside, "after": after}))
        """)
    assert seen["inside"] == {"torch": 1, "interop": 1, "pools": [1], "child": [1, "1"], "env": ["1", "1", "1"]}
    assert seen["after"] == {"torch": seen["before"], "env": None}
    assert not list(jobs_dir.glob("*.lock"))  # the job ended with the block


def test_a_stage_process_takes_its_share_and_says_so(jobs_dir, hold):
    hold(1)
    # ingest stops at the missing folder, after the share is taken and before it writes anything
    args = [sys.executable, "-m", "pipeline.cli", "ingest", "--set", "source.location=/no/such/folder",
            "--set", "common.log_level=DEBUG"]  # the share is a DEBUG line: a failing stage's stderr is one line
    out = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "/no/such/folder" in out.stderr
    assert f"threads: {max(1, CORES // 2)} ({CORES} core(s) shared by 2 job(s)" in out.stderr
    fixed = subprocess.run([*args, "--set", "orchestrate.threads=3"], cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=120)
    assert "threads: 3 (orchestrate.threads = 3)" in fixed.stderr
    assert len(list(jobs_dir.glob("*.lock"))) == 1  # each stage's own job ended with it


def test_torchrun_ranks_split_the_stages_share(jobs_dir, monkeypatch):
    from pipeline.training.ddp import RanksFailed, run_torchrun

    monkeypatch.setenv(THREADS_ENV, "4")
    check = "import os, sys; sys.exit(0 if (os.environ['OMP_NUM_THREADS'], os.environ['{}']) == ('{}', '{}') else 3)"
    run_torchrun([sys.executable, "-c", check.format(THREADS_ENV, 2, 2), "--nproc_per_node", "2"])
    monkeypatch.setenv(THREADS_ENV, "1")  # fewer threads than ranks: one each
    run_torchrun([sys.executable, "-c", check.format(THREADS_ENV, 1, 1), "--nproc_per_node", "2"])
    with pytest.raises(RanksFailed):
        run_torchrun([sys.executable, "-c", check.format(THREADS_ENV, 2, 2), "--nproc_per_node", "2"])


def test_validate_profiles_with_one_process_per_thread_of_the_share(jobs_dir, monkeypatch):
    from pipeline.validation.profile import resolve_workers

    monkeypatch.setenv(THREADS_ENV, "1")
    assert resolve_workers(0) == 1 and resolve_workers(3) == 3


@pytest.mark.skipif(CORES < 2, reason="needs two cores to share")
def test_a_folder_that_cannot_be_written_leaves_the_job_uncounted_not_failed(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(JOBS_DIR_ENV, str(blocked / "jobs"))
    monkeypatch.delenv(JOB_ENV, raising=False)
    with threads.job("blocked"):
        assert JOB_ENV not in os.environ and threads.running_jobs() == 1
