"""``tlops serve``: check the model, then run the service under uvicorn with ``serve.workers`` processes.

Before anything listens, the model the reference names is loaded and checked once here, so a wrong reference,
a missing export or a changed file stops the command with one line (exit 2) rather than leaving a service that
is never ready; a champion that does not exist yet is the exception (a new deployment: the service waits for
the first promotion, not ready meanwhile). A host other than loopback needs the credentials of
``serve.auth_env``: the service never answers the network without them.

The command is one job on the machine (pipeline/common/threads.py): its share of the cores is split among its
workers. Each worker process builds its app from ``TLOPS_SERVE_CONFIG`` (JSON: the project, the params file
and overrides, the model reference, the runtime, its threads), which is how uvicorn's spawned workers get it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from pipeline.common.logs import get_logger
from pipeline.common.threads import run_threads
from pipeline.config import load_params
from pipeline.prediction.models import resolve_model
from pipeline.registry import open_registry
from pipeline.serving.app import ServeConfig, create_app
from pipeline.serving.runtime import Runtime, load_served
from pipeline.serving.samples import check_store

__all__ = ["ServeOptions", "serve", "app_from_env", "CONFIG_ENV"]
log = get_logger(__name__)
CONFIG_ENV = "TLOPS_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeOptions:
    """The command line of ``tlops serve`` (None: the params' value)."""

    root: Path
    params_file: Path
    overrides: list[str] = field(default_factory=list)
    profile: str | None = None
    model: str | None = None
    runtime: Runtime | None = None
    host: str | None = None
    port: int | None = None
    workers: int | None = None


def serve(options: ServeOptions) -> int:
    """Check the model, then serve until interrupted; returns the exit code."""
    import uvicorn

    params = load_params(options.params_file, options.overrides, options.profile)
    cfg = params.serve
    host, port = options.host or cfg.host, options.port or cfg.port
    workers, runtime = options.workers or cfg.workers, options.runtime or cfg.runtime
    auth = _credentials(cfg.auth_env, host)
    with run_threads(params.orchestrate.threads, "tlops serve") as share:
        threads = max(1, share.threads // workers)
        _preflight(options, params, runtime, threads)
        with tempfile.TemporaryDirectory(prefix="tlops-serve-metrics-") as metrics_dir, \
                tempfile.TemporaryDirectory(prefix="tlops-serve-status-") as status_dir:
            os.environ[CONFIG_ENV] = json.dumps({
                "root": str(options.root), "params_file": str(options.params_file), "overrides": options.overrides,
                "profile": options.profile, "model": options.model, "runtime": runtime, "threads": threads,
                "workers": workers,  # several: /ready answers for all of them (pipeline/serving/readiness.py)
                "status_dir": status_dir if workers > 1 else None})
            if workers > 1:  # every worker's metrics in one scrape (prometheus_client's multiprocess mode)
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            log.info("serve: http://%s:%d/predict (%s, %d worker(s) of %d thread(s)%s)", host, port, runtime,
                     workers, threads, ", basic auth" if auth else "")
            uvicorn.run("pipeline.serving.server:app_from_env", factory=True, host=host, port=port,
                        workers=workers, log_level="warning", timeout_graceful_shutdown=30)
    return 0


def app_from_env() -> FastAPI:
    """The app of one worker process, from ``TLOPS_SERVE_CONFIG`` (set by :func:`serve`)."""
    raw = json.loads(os.environ[CONFIG_ENV])
    params = load_params(Path(raw["params_file"]), raw["overrides"], raw["profile"])
    return create_app(ServeConfig(Path(raw["root"]), params, raw["model"], raw["runtime"], int(raw["threads"]),
                                  os.environ.get(params.serve.auth_env) or None, int(raw["workers"]),
                                  Path(raw["status_dir"]) if raw["status_dir"] else None))


def _credentials(variable: str, host: str) -> str | None:
    """The ``user:password`` of ``variable``; refuses to listen beyond loopback without one."""
    value = os.environ.get(variable) or None
    if value is not None and ":" not in value:
        raise ValueError(f"{variable}: expected 'user:password' (HTTP basic auth), got a value without ':'")
    if value is None and not _loopback(host):
        raise ValueError(f"serve.host {host}: listening beyond this machine needs credentials: set {variable} to "
                         "'user:password' (serve.auth_env names the variable)")
    return value


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: loopback only if every address it resolves to is
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def _preflight(options: ServeOptions, params, runtime: Runtime, threads: int) -> None:
    """Check the sample store can be written, and load and check the model the reference names now (a champion
    not promoted yet is let through)."""
    if params.serve.sample_rate > 0:
        check_store(params.serve.sample_store, options.root)
    registry = open_registry(params.promote.registry, options.root)
    if options.model in (None, "champion") and registry.champion() is None:
        log.warning("serve: %s has no champion yet; not ready until the first promotion", registry.location)
        return
    with tempfile.TemporaryDirectory(prefix="tlops-serve-check-") as scratch:
        ref = resolve_model(options.model, registry, Path(scratch))
        version = ref.version.removeprefix("champion ")
        load_served(ref.directory, version, runtime, threads)
