"""Setup time of a fresh checkout: `make setup-dev` with pip against the same with uv, in one run.

Run: ``python -m bench.bench_setup [--target setup-dev] [--warm]``.
Each installer gets a copy of what setup reads (Makefile, the locks, pyproject.toml, the packages) in its
own temporary folder, so each builds a new .venv from nothing. Caches are off by default (pip
``--no-cache-dir``, uv ``--no-cache``), as on a fresh CI machine; ``--warm`` leaves them on (a developer's
second clone). pip runs first, so any download it warms up can only help uv's figure if caches are on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import BenchReport

ROOT = Path(__file__).resolve().parent.parent
SETUP_INPUTS = ("Makefile", "requirements.lock", "requirements-dev.lock", "pyproject.toml", "README.md",
                "pipeline", "flows")


def timed_setup(installer: str, target: str, warm: bool) -> tuple[float, str]:
    """Seconds of `make <target> INSTALLER=<installer>` in a fresh copy, and its last output line."""
    with tempfile.TemporaryDirectory(prefix=f"bench-setup-{installer}-") as tmp:
        for name in SETUP_INPUTS:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, Path(tmp) / name)
        env = {**os.environ, **({} if warm else {"PIP_NO_CACHE_DIR": "1", "UV_NO_CACHE": "1"})}
        started = time.perf_counter()
        proc = subprocess.run(["make", target, f"INSTALLER={installer}"], cwd=tmp, env=env, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"make {target} INSTALLER={installer} failed:\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return seconds, proc.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="setup-dev", choices=("setup", "setup-dev"))
    parser.add_argument("--warm", action="store_true", help="keep pip's and uv's caches (default: cold)")
    ns = parser.parse_args()
    report = BenchReport("bench_setup")
    seconds = {}
    for installer in ("pip", "uv"):
        seconds[installer], line = timed_setup(installer, ns.target, ns.warm)
        report.emit(installer=installer, target=ns.target, caches="warm" if ns.warm else "cold",
                    seconds=round(seconds[installer], 1), said=line)
    report.emit(uv_vs_pip=round(seconds["pip"] / seconds["uv"], 2), saved_s=round(seconds["pip"] - seconds["uv"], 1))
    print(f"results: {report.save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
