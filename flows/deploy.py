"""The three deployments, and the ways to run them: `python -m flows.deploy [--register|--worker|--start-server]`.

- retrain-scheduled: the retrain flow on a cron schedule (params `orchestrate.retrain_cron`);
  overlapping runs of it are cancelled, not queued, so a slow run never piles up behind itself.
- retrain-on-demand: the retrain flow, started from the dashboard's Run button with a parameter form.
- drift-check: daily; checks what was served since the last check against the champion and starts retrain on drift.
Every retrain run also holds the one slot of the global concurrency limit `orchestrate.concurrency_limit`,
so a scheduled and an on-demand run never train at once.

Two ways to run them:
- `--register` (`make deploy`): register the deployments on the work pool `orchestrate.work_pool`
  (type `orchestrate.work_pool_type`: process, docker or kubernetes; created when missing) of the
  server in PREFECT_API_URL; a worker on that pool (`--worker`, `make worker`) runs them, nobody at a
  terminal.
- without it (`make ui`): serve them from this process (`serve`), with `--start-server` a local
  Prefect server first (SQLite, or PostgreSQL with `--database-url`) and a web server for the reports.

The started server is closed by HTTP basic auth: its "user:password" is PREFECT_SERVER_API_AUTH_STRING when
set, else `.prefect/auth-string` (generated once, mode 0600). `--register` and `--worker` send
PREFECT_API_AUTH_STRING, else that file's string when it exists (a server started by `make ui`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from prefect import deploy, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from flows.drift_check import drift_check
from flows.engine import ensure_concurrency_limit, ensure_work_pool
from flows.retrain import retrain
from flows.server import CLIENT_AUTH_ENV, PrefectServer, ReportServer, client_auth_string, server_auth_string
from pipeline.config import OrchestrateParams, load_params
from pipeline.project import find_root
from pipeline.runs.publish import URL_ENV
from pipeline.runs.workspace import runs_root

__all__ = ["build_deployments", "register", "main"]


def build_deployments(project: Path) -> list:
    """The three deployments, with schedules from the project's params.yaml.

    Their entrypoints are module paths (``flows.retrain.retrain``), importable wherever the project is
    installed: this checkout for `serve` and a process worker, the image for docker and kubernetes.
    """
    orchestrate = load_params(project / "params.yaml").orchestrate
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    queued = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    common = dict(tags=["tlops"], entrypoint_type=EntrypointType.MODULE_PATH)
    return [
        retrain.to_deployment("retrain-scheduled", parameters={"reason": "scheduled"}, concurrency_limit=one_at_a_time,
                              schedules=[CronSchedule(cron=orchestrate.retrain_cron, timezone=orchestrate.timezone)],
                              description="Weekly retraining on the configured source.", **common),
        retrain.to_deployment("retrain-on-demand", concurrency_limit=queued,
                              description="Retrain now; fields left empty keep params.yaml's values.", **common),
        drift_check.to_deployment("drift-check", concurrency_limit=one_at_a_time,
                                  schedules=[CronSchedule(cron=orchestrate.drift_cron, timezone=orchestrate.timezone)],
                                  description="Drift test of the newest images against the champion; retrains on it.",
                                  **common),
    ]


def _job_variables(project: Path, orchestrate: OrchestrateParams) -> dict:
    """Where a flow run starts: in this checkout (process pool), or the image's /project (docker, kubernetes).

    The pool admits these values only (flows/engine.py locks its job variables), so a custom run cannot move them.
    """
    if orchestrate.work_pool_type == "process":
        return {"working_dir": str(project)}
    return {"image": orchestrate.worker_image}


def register(project: Path) -> list[str]:
    """Create the work pool and the concurrency limit when missing, then register the deployments on the pool.

    Returns:
        What was done, one line each.
    """
    orchestrate = load_params(project / "params.yaml").orchestrate
    done = [ensure_work_pool(project, orchestrate.work_pool, orchestrate.work_pool_type,
                             pinned=_job_variables(project, orchestrate))]
    ensure_concurrency_limit(orchestrate.concurrency_limit)
    done.append(f"global concurrency limit {orchestrate.concurrency_limit!r} (1 slot) in place")
    image = None if orchestrate.work_pool_type == "process" else orchestrate.worker_image
    deployments = build_deployments(project)
    for deployment in deployments:
        deployment.job_variables = _job_variables(project, orchestrate)
    # the image is built by infra/docker, not here: deploy() only records its name
    deploy(*deployments, work_pool_name=orchestrate.work_pool, image=image, build=False, push=False,
           print_next_steps_message=False, ignore_warnings=True)
    done += [f"deployment {d.flow_name}/{d.name} on pool {orchestrate.work_pool!r}" for d in deployments]
    return done


def main(argv: list[str] | None = None) -> int:
    """Register the deployments (--register), or serve them here (optionally starting a server first)."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--register", action="store_true",
                        help="register on the work pool of the server in PREFECT_API_URL (make deploy)")
    parser.add_argument("--worker", action="store_true",
                        help="start a worker on orchestrate.work_pool of the server in PREFECT_API_URL (make worker)")
    parser.add_argument("--start-server", action="store_true", help="start a Prefect server on 127.0.0.1 first")
    parser.add_argument("--port", type=int, default=4200, help="port of the started server (default 4200)")
    parser.add_argument("--database-url", default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"),
                        help="the started server's database, e.g. postgresql+asyncpg://user:pass@host/db "
                             "(default: SQLite under .prefect/)")
    parser.add_argument("--reports-port", type=int, default=8080,
                        help="port of the reports web server started with --start-server (default 8080; 0: none)")
    args = parser.parse_args(argv)
    project = find_root()
    home = project / ".prefect"  # PREFECT_HOME of `make ui`'s server, where its auth string is
    if args.register:
        # Prefect read PREFECT_API_AUTH_STRING when it was imported: a string from the file goes in explicitly
        with temporary_settings(updates={PREFECT_API_AUTH_STRING: client_auth_string(home)}):
            for line in register(project):
                print(line, flush=True)
        return 0
    if args.worker:
        orchestrate = load_params(project / "params.yaml").orchestrate
        auth = client_auth_string(home)
        if auth:  # the worker and the flow runs it starts read it from the environment
            os.environ[CLIENT_AUTH_ENV] = auth
        prefect = str(Path(sys.executable).with_name("prefect"))
        os.execv(prefect, [prefect, "worker", "start", "--pool", orchestrate.work_pool, "--type",
                           orchestrate.work_pool_type])
    if not args.start_server:
        serve(*build_deployments(project))
        return 0
    # SIGTERM (a service manager, `kill`) leaves through the `with` blocks below, which stop the servers;
    # serve() installs its own handler (the same exit) once its runner starts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    auth, auth_source = server_auth_string(home)
    with PrefectServer(home, port=args.port, database_url=args.database_url, auth_string=auth) as server:
        os.environ.update(server.env())  # for the flow-run processes that serve() starts
        reports = ReportServer(runs_root(project), port=args.reports_port).start() if args.reports_port else None
        if reports:  # served flow runs link their reports over http
            os.environ[URL_ENV] = reports.url
        print(f"Prefect dashboard: {server.ui_url}  (deployments: retrain-scheduled, retrain-on-demand, drift-check)"
              + (f"; reports: {reports.url}" if reports else ""), flush=True)
        print(f"The dashboard and API ask for the user:password in {auth_source} (type the whole line at the "
              f"login; `export {CLIENT_AUTH_ENV}=...` for the prefect CLI)", flush=True)
        try:
            # this process read its settings when Prefect was imported: point it at the server explicitly
            with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: auth}):
                serve(*build_deployments(project))
        finally:
            if reports:
                reports.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
