"""The stages' process pools (pipeline/common/pools.py): workers forked from a server that imported their modules
once, each starting from this process's environment, stdout and stderr and working directory as they are when its
pool starts, in this process's group."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from pipeline.common.pools import process_pool
from tests.conftest import ROOT

PRELOADED = "pipeline.validation.profile"  # numpy, scipy, PIL: a module the jobs below never import themselves


def _inherited(tag: str) -> dict:
    print(f"out {tag}", flush=True)
    print(f"err {tag}", file=sys.stderr, flush=True)
    return {"env": os.environ.get("TLOPS_POOL_CHECK"), "cwd": os.getcwd(), "pid": os.getpid(),
            "parent": os.getppid(), "group": os.getpgid(0), "preloaded": PRELOADED in sys.modules}


def _mark(value: str) -> None:
    os.environ["TLOPS_POOL_MARK"] = value


def _marked(_: int) -> str | None:
    return os.environ.get("TLOPS_POOL_MARK")


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_workers_start_from_what_this_process_has_when_the_pool_starts(monkeypatch, tmp_path):
    monkeypatch.setenv("TLOPS_POOL_CHECK", "first")
    with process_pool(2, [PRELOADED]) as pool:
        first = pool.submit(_inherited, "one").result(timeout=120)
    assert first["env"] == "first"
    assert first["parent"] != os.getpid() and first["group"] == os.getpgid(0)  # forked by the server, our group

    # the server is this process's first pool's; the next pool's workers still get this process's state of now
    monkeypatch.setenv("TLOPS_POOL_CHECK", "second")
    monkeypatch.chdir(tmp_path)
    with process_pool(1, [PRELOADED]) as pool:
        second = pool.submit(_inherited, "two").result(timeout=120)
    assert (second["env"], second["cwd"]) == ("second", str(tmp_path))
    assert second["parent"] == first["parent"]  # the same server: nothing imported again


def _point_streams_at(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _two_pools_two_destinations(first: str, second: str) -> None:
    """The first pool (which starts the server) with stdout and stderr going to ``first``, the next to ``second``."""
    for path, tag in ((first, "one"), (second, "two")):
        _point_streams_at(path)
        with process_pool(1, [PRELOADED]) as pool:
            pool.submit(_inherited, tag).result(timeout=120)


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_a_workers_output_goes_where_this_processes_goes_when_its_pool_starts(tmp_path):
    """In a fresh interpreter, so that its first pool starts the server with the first destination."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    script = f"from tests.test_common_pools import _two_pools_two_destinations as run; run({str(first)!r}, " \
             f"{str(second)!r})"
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=300, check=True)
    assert "out one" in first.read_text() and "err one" in first.read_text()
    assert "out two" in second.read_text() and "err two" in second.read_text()  # not the server's destination
    assert "two" not in first.read_text()


def _library_threads(_: int) -> dict:
    from threadpoolctl import threadpool_info

    return {"blas": sorted({pool["num_threads"] for pool in threadpool_info()}),
            "torch": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None}


def _pools_on_one_then_two_threads() -> None:
    for threads in ("1", "2"):  # the first pool starts the server (its libraries load on one thread)
        os.environ["OMP_NUM_THREADS"] = threads
        with process_pool(1, [PRELOADED]) as pool:
            print(json.dumps(pool.submit(_library_threads, 0).result(timeout=120)))


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods() or (os.cpu_count() or 1) < 2,
                    reason="no fork server here, or one core")
def test_a_workers_library_pools_follow_the_environment_of_its_pool_not_the_servers():
    script = "from tests.test_common_pools import _pools_on_one_then_two_threads as run; run()"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)
    first, second = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert first["blas"] == [1] and second["blas"] == [2], (first, second)  # scipy's BLAS, loaded by the server


def _first_pool_of_a_process() -> None:
    with process_pool(2, [PRELOADED]) as pool:
        print(json.dumps(list(pool.map(_inherited, ["a", "b"], timeout=120))))


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_the_first_pool_of_a_process_has_its_modules_imported_before_any_job():
    script = "from tests.test_common_pools import _first_pool_of_a_process as first; first()"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)
    reports = json.loads(done.stdout.splitlines()[-1])
    assert all(report["preloaded"] for report in reports), reports  # imported by the server, inherited by the fork


def test_the_initializer_runs_in_each_worker_after_the_environment_is_set(monkeypatch):
    monkeypatch.setenv("TLOPS_POOL_MARK", "from the parent")
    with process_pool(2, [__name__], _mark, ("from the initializer",)) as pool:
        assert list(pool.map(_marked, range(4), timeout=120)) == ["from the initializer"] * 4
    assert os.environ["TLOPS_POOL_MARK"] == "from the parent"  # this process untouched
