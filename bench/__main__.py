"""`make bench`: run every bench/bench_*.py in turn (each in its own process) and list the results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if not scripts:
        print("no benchmarks yet (bench/bench_*.py)")
        return 0
    failed = []
    for script in scripts:
        print(f"## {script.stem}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], cwd=HERE.parent).returncode != 0:
            failed.append(script.stem)
    print(f"## done: {len(scripts) - len(failed)} ok, {len(failed)} failed {failed or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
