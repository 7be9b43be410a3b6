"""Orchestration overhead of the retrain flow, and what a no-op rerun costs.

On a tiny copy of the project (tests/support/tiny.py), the retrain flow runs twice in this process
(Prefect's temporary local API): a full run, then a rerun with nothing changed. Figures:
- overhead: the flow's wall time minus the stages' own time (dvc repro of each stage), per run;
- the no-op rerun's wall time as a fraction of the full run's (every training stage skipped).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from tests.support.tiny import make_tiny_project

    report = BenchReport("orchestrate")
    with tempfile.TemporaryDirectory(prefix="tlops-bench-orchestrate-") as tmp:
        project = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
        make_tiny_project(project, Path(tmp) / "remote")
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        os.chdir(project)
        from flows.retrain import retrain  # after PREFECT_HOME: Prefect reads its settings on import

        walls = {}
        try:
            for label in ("full", "noop_rerun"):
                started = time.perf_counter()
                result = retrain(reason=f"bench {label}")
                wall = time.perf_counter() - started
                stage_seconds = sum(s["seconds"] for s in result["stages"])
                walls[label] = wall
                report.emit(run=label, wall_s=round(wall, 2), stages_s=round(stage_seconds, 2),
                            overhead_s=round(wall - stage_seconds, 2),
                            overhead_share=round((wall - stage_seconds) / wall, 3),
                            ran=[s["stage"] for s in result["stages"] if s["status"] == "ran"])
        finally:
            os.chdir(ROOT)  # leave the temporary project before it is deleted (torch will not load from a gone cwd)
        report.emit(noop_rerun_over_full=round(walls["noop_rerun"] / walls["full"], 3))
    report.save()


if __name__ == "__main__":
    main()
