"""The default run, stage by stage: what `make run` costs on this machine, and what the verdict costs.

A fresh clone of the project at ``--rev`` (default: HEAD) runs the retrain flow as `make run` does
(``python -m flows.retrain``, Prefect's temporary server, its own PREFECT_HOME) with this checkout's
environment; ``--set key=value`` edits the clone's params.yaml first (committed there: a run works from
the committed params), e.g. ``--set source.location=/path/to/folder``. One JSON line per stage (status,
seconds), then the whole run: wall time, the stages' sum, the flow's overhead, the verdict's cost (the
scratch side: the baseline stage, which trains the curve's scratch runs too; in earlier revisions plus the
curve stage, or the scratch runs inside evaluate) as a ratio of the fine-tune's, and the verdicts (overall
and per budget, with the intervals).
The README's table of stage timings is copied from this bench's output.

    python -m bench.bench_run                      # HEAD on the default data
    python -m bench.bench_run --rev 4b9835b        # an earlier revision, for before/after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[1]
_STAGE_LINE = re.compile(r"stage (\w+): (ran|skipped|restored) in ([\d.]+)s")
_RUN_DONE = re.compile(r"Run (\S+) done\. Its worktree \(data, model, reports\): (\S+)")


def _clone(rev: str, dest: Path, settings: list[str]) -> str:
    """A clone of this project at ``rev`` with ``settings`` applied to its params.yaml; returns ``rev``'s commit."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=dest, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=dest, check=True, capture_output=True,
                            text=True).stdout.strip()
    if settings:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        for setting in settings:
            key, _, value = setting.partition("=")
            *path, last = key.split(".")
            node = params
            for part in path:
                node = node.setdefault(part, {})
            node[last] = yaml.safe_load(value)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git = ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench"]
        subprocess.run(git + ["commit", "-q", "-am", "bench settings: " + " ".join(settings)], cwd=dest, check=True)
    return commit


def _verdicts(worktree: Path) -> dict:
    """The run's verdict, per budget (with both sides' intervals) and with all labels."""
    metrics = json.loads((worktree / "results" / "evaluate" / "metrics.json").read_text())
    budgets = {b["name"]: {"verdict": b["verdict"],
                           **{f"{side}_{k}": b[side][k] for side in ("transfer", "scratch") for k in ("mean", "low",
                                                                                                       "high")}}
               for b in metrics["label_efficiency"]["budgets"]}
    return {"verdict": metrics["verdict"], "full_labels": metrics["full_labels"]["verdict"],
            "finetuned_accuracy": metrics["full_labels"]["finetuned_accuracy"],
            "scratch_accuracy": metrics["full_labels"]["scratch_accuracy"], "budgets": budgets,
            "scratch_runs_in_evaluate_s": round(sum(r.get("wall_seconds", 0.0) for r in
                                                    metrics["label_efficiency"]["runs"] if r["side"] == "scratch"), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the revision to run (default: HEAD)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml setting of the run (repeatable)")
    parser.add_argument("--name", default=None, help="results file bench/results/run-<name>.json")
    ns = parser.parse_args()
    report = BenchReport(f"run-{ns.name or ns.rev}")
    with tempfile.TemporaryDirectory(prefix="tlops-bench-run-") as tmp:
        project = Path(tmp) / "project"
        commit = _clone(ns.rev, project, ns.settings)
        env = {**os.environ, "PYTHONPATH": str(project), "PREFECT_HOME": str(Path(tmp) / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "TLOPS_NO_PROGRESS": "1"}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flows.retrain"], cwd=project, env=env, capture_output=True,
                              text=True)
        wall = time.perf_counter() - started
        output = proc.stdout + proc.stderr
        (Path(tmp) / "run.log").write_text(output)
        if proc.returncode != 0:
            print(output[-4000:], file=sys.stderr)
            raise SystemExit(f"the run failed (exit {proc.returncode})")
        stages = {name: (status, float(seconds)) for name, status, seconds in _STAGE_LINE.findall(output)}
        for name, (status, seconds) in stages.items():
            report.emit(rev=commit, stage=name, status=status, seconds=round(seconds, 1))
        done = _RUN_DONE.search(output)
        seconds = {name: s for name, (_, s) in stages.items()}
        worktree = Path(done.group(2))
        verdicts = _verdicts(worktree)
        scratch = seconds.get("baseline", 0.0) + (
            seconds["curve"] if "curve" in seconds  # a curve stage of its own (2026-12-05 to 12-07)
            else 0.0 if (worktree / "results" / "curve" / "scratch_runs.json").is_file()  # the baseline stage's pool
            else verdicts["scratch_runs_in_evaluate_s"])  # earlier: the curve's scratch runs inside evaluate
        report.emit(rev=commit, settings=ns.settings, wall_s=round(wall, 1), stages_s=round(sum(seconds.values()), 1),
                    overhead_s=round(wall - sum(seconds.values()), 1), finetune_s=seconds.get("finetune"),
                    verdict_cost_s=round(scratch, 1),
                    verdict_cost_over_finetune=round(scratch / seconds["finetune"], 2) if seconds.get("finetune")
                    else None, **{k: v for k, v in verdicts.items() if k != "scratch_runs_in_evaluate_s"})
    report.save()


if __name__ == "__main__":
    main()
