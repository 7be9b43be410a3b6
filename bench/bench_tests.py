"""The test suite's wall time, file by file: what `make test` costs on this machine and where the time goes.

Runs the suite of this working tree as `make test` does (pytest-xdist with ``--workers`` processes, each test
file kept on one worker, the files of slow tests first) in this checkout's environment, with a JUnit XML
report, and prints one JSON line per test file for the ``--top`` files that took longest (the summed seconds
of its tests, setups included, and its slowest test), then the whole: wall time against the 600-second goal,
tests passed, failed and skipped, the tests' summed seconds, the CPU seconds of every process the suite ran,
and how busy that kept the cores; a failed test gets a line of its own with what pytest said. ``--marker "not
slow"`` times the edit loop (`make test-fast`).

``--processes`` also says where that CPU went, by kind of process: the tests' own processes (pytest and its
workers), each stage, each DVC command, Prefect's flow-run processes, spawned pool workers, ... Every Python
process the suite starts with the suite's PYTHONPATH then records its own CPU seconds and command line when it
exits (a ``sitecustomize`` there); what no record covers (processes killed by a signal, such as the servers the
tests stop; the pool workers, forked from multiprocessing's fork server, which end without exit hooks (their CPU
reaches the total through the server, which its process waits for at exit); processes given a PYTHONPATH of their
own; programs that are not Python: PostgreSQL, nginx, chromium, git) is the line ``not attributed``: an
estimate, the suite's CPU as its waited-for processes add up less what was recorded (a process that outlives its
parent records CPU that sum never sees).

    python -m bench.bench_tests                          # the full suite, 3 workers (as make test)
    python -m bench.bench_tests --marker "not slow"      # make test-fast's tests
    python -m bench.bench_tests --processes              # ... and the CPU by kind of process
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 600  # the suite's wall-time goal on the 2-core development machine (issue 24)
# imported by every Python process of the suite (PYTHONPATH): one JSON line each, appended at its exit
RECORDER = """\
import atexit, json, os, resource, sys

def _record():  # silent whatever happens: a test may read what its processes print
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spawned = "multiprocessing" in sys.modules and sys.modules["multiprocessing"].parent_process() is not None
        line = json.dumps({"argv": sys.argv[:3], "tests": "pytest" in sys.modules, "spawned": spawned,
                           "cpu_s": usage.ru_utime + usage.ru_stime})
        with open(os.environ["TLOPS_BENCH_PROCESSES"], "a") as out:
            out.write(line + "\\n")
    except Exception:
        pass

atexit.register(_record)
"""


def process_kind(record: dict) -> str:
    """What a recorded process was, from its command line: the tests' own, a stage, a DVC command, ..."""
    argv = [str(part) for part in record["argv"]] + ["", ""]
    program = argv[0].rsplit("/", 1)[-1]
    if record.get("spawned"):  # its command line is its parent's (multiprocessing rewrites it)
        return "spawned pool workers (where there is no fork server) that exited on their own"
    if record["tests"]:
        return "tests (pytest and its workers, in process)"
    if program == "tlops" or argv[0].endswith("pipeline/cli.py"):
        return f"tlops {argv[1]}"
    if argv[0].endswith("dvc/__main__.py") or program == "dvc":
        return f"dvc {argv[1]}"
    if argv[0].endswith("prefect/engine.py"):
        return "prefect flow-run processes"
    return f"other python: {program or argv[0]}"


def cpu_by_process(records_file: Path, total_cpu_s: float) -> list[dict]:
    """The suite's CPU seconds by kind of process, most first, and what the records do not cover."""
    kinds: dict[str, dict] = {}
    lines = records_file.read_text().splitlines() if records_file.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a process cut short mid-line: its CPU stays not attributed
            continue
        row = kinds.setdefault(process_kind(record), {"processes": 0, "cpu_s": 0.0})
        row["processes"] += 1
        row["cpu_s"] += record["cpu_s"]
    rows = [{"kind": kind, "processes": row["processes"], "cpu_s": round(row["cpu_s"], 1)}
            for kind, row in sorted(kinds.items(), key=lambda item: -item[1]["cpu_s"])]
    recorded = sum(row["cpu_s"] for row in kinds.values())
    return rows + [{"kind": "not attributed", "processes": None, "cpu_s": round(total_cpu_s - recorded, 1)}]


def read_report(junit_xml: Path) -> tuple[list[dict], list[dict]]:
    """pytest's ``--junitxml`` report, read once: (:func:`file_totals`, :func:`failed_tests`)."""
    cases = list(ET.parse(junit_xml).iter("testcase"))
    return file_totals(cases), failed_tests(cases)


def file_totals(cases: list[ET.Element]) -> list[dict]:
    """Per test file: tests, outcomes, summed seconds and the slowest test; longest first.

    Args:
        cases: the report's ``testcase`` elements (a test's time includes its setup and teardown).
    """
    files: dict[str, dict] = {}
    for case in cases:
        module = case.get("classname", "").split(".")
        path = "/".join(module[:-1] if module[-1][:1].isupper() else module) + ".py"  # a test class is not a file
        seconds = float(case.get("time") or 0.0)
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        row = files.setdefault(path, {"file": path, "tests": 0, "passed": 0, "failure": 0, "error": 0, "skipped": 0,
                                      "seconds": 0.0, "slowest": None, "slowest_s": 0.0})
        row["tests"] += 1
        row[outcome] += 1
        row["seconds"] += seconds
        if seconds >= row["slowest_s"]:
            row["slowest"], row["slowest_s"] = case.get("name"), seconds
    rows = sorted(files.values(), key=lambda row: -row["seconds"])
    for row in rows:
        row["seconds"], row["slowest_s"] = round(row["seconds"], 1), round(row["slowest_s"], 1)
    return rows


def failed_tests(cases: list[ET.Element]) -> list[dict]:
    """Each failed or erroring test of the report's ``testcase`` elements: its id, whether it failed or erred, and
    the first lines of what pytest said (the report is a temporary file: these rows are what is left of it)."""
    rows = []
    for case in cases:
        for child in case:
            if child.tag in ("failure", "error"):
                said = (child.get("message") or "") + "\n" + (child.text or "")
                rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": child.tag,
                             "said": "\n".join(said.strip().splitlines()[:6])[:1000]})
    return rows


def suite_figures(files: list[dict], wall_s: float, cpu_s: float, workers: int) -> dict:
    """The whole suite's figures from its files' totals, its wall time and the CPU seconds it used."""
    summed = sum(row["seconds"] for row in files)
    cores = os.cpu_count() or 1
    return {"wall_s": round(wall_s, 1), "goal_s": GOAL_S, "wall_over_goal": round(wall_s / GOAL_S, 2),
            "tests": sum(row["tests"] for row in files), "passed": sum(row["passed"] for row in files),
            "failed": sum(row["failure"] + row["error"] for row in files),
            "skipped": sum(row["skipped"] for row in files), "tests_summed_s": round(summed, 1),
            "workers": workers, "cpu_s": round(cpu_s, 1),
            "cores_busy": round(cpu_s / (wall_s * cores), 2) if wall_s > 0 else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("TEST_WORKERS", 3)),
                        help="pytest-xdist workers as in `make test` (0: one process)")
    parser.add_argument("--marker", default=None, help='a pytest -m expression, e.g. "not slow"')
    parser.add_argument("--top", type=int, default=15, help="files listed, longest first")
    parser.add_argument("--name", default=None, help="results file bench/results/tests-<name>.json")
    parser.add_argument("--processes", action="store_true", help="also the CPU seconds by kind of process")
    ns = parser.parse_args()
    report = BenchReport(f"tests-{ns.name or ('fast' if ns.marker else 'full')}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="tlops-bench-tests-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        if ns.workers:
            command += ["-n", str(ns.workers), "--dist", "loadfile", "--no-loadscope-reorder"]
        if ns.marker:
            command += ["-m", ns.marker]
        env, records = dict(os.environ), Path(tmp) / "processes.jsonl"
        if ns.processes:
            (Path(tmp) / "sitecustomize.py").write_text(RECORDER)
            env.update(TLOPS_BENCH_PROCESSES=str(records),
                       PYTHONPATH=os.pathsep.join(filter(None, [tmp, env.get("PYTHONPATH")])))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not junit.is_file():
            print((proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
            raise SystemExit(f"pytest wrote no report (exit {proc.returncode})")
        files, failures = read_report(junit)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        by_process = cpu_by_process(records, cpu) if ns.processes else []
    for row in files[:ns.top]:
        report.emit(rev=commit, **row)
    for failure in failures:
        report.emit(rev=commit, **failure)
    for row in by_process:
        report.emit(rev=commit, **row)
    report.emit(rev=commit, uncommitted_changes=dirty, marker=ns.marker, **suite_figures(files, wall, cpu, ns.workers))
    report.save()
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
