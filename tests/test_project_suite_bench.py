"""bench_tests' figures: per-file totals read from pytest's JUnit XML and the whole suite's figures (the bench
itself is run, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_tests import GOAL_S, RECORDER, cpu_by_process, read_report, suite_figures

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="tests.test_flows_e2e" name="test_run" time="178.25"/>
<testcase classname="tests.test_flows_e2e" name="test_rerun" time="31.5"/>
<testcase classname="tests.test_stage_validate" name="test_gate[0.01-False]" time="3.6"/>
<testcase classname="tests.test_stage_validate" name="test_broken" time="1.0">
<failure message="AssertionError: boom">tests/test_stage_validate.py:12: in test_broken
    assert False, "boom"</failure></testcase>
<testcase classname="tests.test_stage_validate.TestGroup" name="test_in_a_class" time="0.4"/>
<testcase classname="tests.test_data_sources" name="test_download" time="0.01"><skipped message="offline"/></testcase>
</testsuite></testsuites>
"""


def test_totals_per_file_longest_first_with_outcomes_and_the_slowest_test(tmp_path: Path):
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    files, failures = read_report(report)
    assert [row["file"] for row in files] == ["tests/test_flows_e2e.py", "tests/test_stage_validate.py",
                                              "tests/test_data_sources.py"]
    e2e, validate, sources = files
    assert (e2e["tests"], e2e["passed"], e2e["seconds"]) == (2, 2, 209.8)
    assert (e2e["slowest"], e2e["slowest_s"]) == ("test_run", 178.2)
    # a test inside a class counts with its file
    assert (validate["tests"], validate["passed"], validate["failure"], validate["seconds"]) == (3, 2, 1, 5.0)
    assert (sources["skipped"], sources["passed"]) == (1, 0)
    (failed,) = failures
    assert failed["test"] == "tests.test_stage_validate::test_broken" and failed["outcome"] == "failure"
    assert failed["said"].startswith("AssertionError: boom\ntests/test_stage_validate.py:12")


def test_suite_figures_sum_the_files_and_compare_with_the_goal(tmp_path: Path, monkeypatch):
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    monkeypatch.setattr("bench.bench_tests.os.cpu_count", lambda: 2)
    whole = suite_figures(read_report(report)[0], wall_s=300.0, cpu_s=450.0, workers=2)
    assert (whole["tests"], whole["passed"], whole["failed"], whole["skipped"]) == (6, 4, 1, 1)
    assert whole["tests_summed_s"] == pytest.approx(214.8)
    assert whole["wall_over_goal"] == round(300 / GOAL_S, 2) and whole["cores_busy"] == 0.75


def test_the_bench_explains_itself():
    done = subprocess.run([sys.executable, "-m", "bench.bench_tests", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    assert "--marker" in done.stdout and "--workers" in done.stdout


def test_each_python_process_records_its_cpu_at_exit_and_the_rest_is_not_attributed(tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(RECORDER)
    records = tmp_path / "processes.jsonl"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "TLOPS_BENCH_PROCESSES": str(records)}
    burn = "import time; end = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], env=env, check=True)
    subprocess.run([str(Path(sys.executable).with_name("tlops")), "--version"], env=env, check=True,
                   capture_output=True)
    spawn = ("import multiprocessing, time; child = multiprocessing.get_context('spawn').Process(target=time.sleep, "
             "args=(0,)); child.start(); child.join()")
    subprocess.run([sys.executable, "-c", spawn], env=env, check=True)  # the child's command line is its parent's
    # a process without the records file says nothing (a test may read what its processes print)
    quiet = subprocess.run([sys.executable, "-c", "pass"], env={**env, "TLOPS_BENCH_PROCESSES": str(tmp_path)},
                           capture_output=True, text=True, check=True)
    assert quiet.stderr == "" and quiet.stdout == ""
    rows = {row["kind"]: row for row in cpu_by_process(records, total_cpu_s=10.0)}
    spawned = "spawned pool workers (where there is no fork server) that exited on their own"
    assert set(rows) == {"other python: -c", "tlops --version", spawned, "not attributed"}
    # the burn and the spawner (and the resource tracker multiprocessing may start beside it)
    assert rows["other python: -c"]["processes"] in (2, 3) and rows["other python: -c"]["cpu_s"] >= 0.3
    assert rows[spawned]["processes"] == 1
    recorded = sum(rows[kind]["cpu_s"] for kind in ("other python: -c", "tlops --version", spawned))
    assert rows["not attributed"]["cpu_s"] == pytest.approx(10.0 - recorded, abs=0.11)
