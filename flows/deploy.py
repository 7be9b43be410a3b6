"""Deployments, served by this process: `python -m flows.deploy` (what `make ui` runs).

- retrain-scheduled: the retrain flow on a cron schedule (params `orchestrate.retrain_cron`);
  overlapping runs are cancelled, not queued, so a slow run never piles up behind itself.
- retrain-on-demand: the retrain flow, started from the dashboard's Run button with a parameter form.
- drift-check: daily; checks the newest batch against the champion and starts retrain on drift.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule

from flows.drift_check import drift_check
from flows.retrain import retrain
from flows.server import PrefectServer
from pipeline.config import load_params
from pipeline.project import find_root

__all__ = ["build_deployments", "main"]


def build_deployments(project: Path) -> list:
    """The three deployments, with schedules from the project's params.yaml."""
    orchestrate = load_params(project / "params.yaml").orchestrate
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    queued = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    return [
        retrain.to_deployment("retrain-scheduled", parameters={"reason": "scheduled"}, concurrency_limit=one_at_a_time,
                              schedules=[CronSchedule(cron=orchestrate.retrain_cron, timezone=orchestrate.timezone)],
                              description="Weekly retraining on the configured source.", tags=["tlops"]),
        retrain.to_deployment("retrain-on-demand", concurrency_limit=queued, tags=["tlops"],
                              description="Retrain now; fields left empty keep params.yaml's values."),
        drift_check.to_deployment("drift-check", concurrency_limit=one_at_a_time, tags=["tlops"],
                                  schedules=[CronSchedule(cron=orchestrate.drift_cron, timezone=orchestrate.timezone)],
                                  description="Drift test of the newest batch against the champion; retrains on drift."),
    ]


def main(argv: list[str] | None = None) -> int:
    """Serve the deployments; with --start-server, also run a local Prefect server first."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--start-server", action="store_true", help="start a Prefect server on 127.0.0.1 first")
    parser.add_argument("--port", type=int, default=4200, help="port of the started server (default 4200)")
    args = parser.parse_args(argv)
    project = find_root()
    if not args.start_server:
        serve(*build_deployments(project))
        return 0
    with PrefectServer(project / ".prefect", port=args.port) as server:
        os.environ.update(server.env())
        print(f"Prefect dashboard: {server.ui_url}  (deployments: retrain-scheduled, retrain-on-demand, drift-check)",
              flush=True)
        serve(*build_deployments(project))
    return 0


if __name__ == "__main__":
    sys.exit(main())
