"""/ready across the ``serve.workers`` processes of one service: ready only when every worker is.

uvicorn's workers share one listening socket, and each takes requests before its model is loaded (the model loads
in the background: a new deployment waits for its first champion). One worker's /ready would answer 200 while
another still answers /predict with 503, and a load balancer would send traffic to both. So each worker writes
its own status (what its /ready says alone) to a folder the parent process made, every :data:`PUBLISH_S`, and
/ready is 200 only when ``workers`` live workers have a fresh status that says ready.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["PUBLISH_S", "STALE_S", "publish", "fleet_status"]
PUBLISH_S = 1.0
STALE_S = 5.0  # a status older than this is a worker that hangs or is gone (uvicorn starts another)


def publish(folder: Path, status: dict[str, Any]) -> None:
    """Write this worker's status, renamed into place (a reader never sees half of it); not synced to disk: the
    folder lives as long as the service."""
    pid = os.getpid()
    temporary = folder / f".{pid}.tmp"
    temporary.write_text(json.dumps(status))
    os.replace(temporary, folder / f"{pid}.json")


def fleet_status(folder: Path, workers: int, own: dict[str, Any]) -> dict[str, Any]:
    """This worker's status with ``ready`` true only when ``workers`` live workers have a fresh status that says
    ready, and ``workers`` / ``workers_ready`` saying how many are."""
    now, ready = time.time(), 0
    for path in folder.glob("*.json"):
        try:
            pid = int(path.stem)
            if now - path.stat().st_mtime > STALE_S or not _alive(pid):
                continue
            ready += bool(json.loads(path.read_text()).get("ready"))
        except (ValueError, OSError):  # not a worker's file, or replaced while read: the next look sees it
            continue
    return {**own, "ready": bool(own["ready"]) and ready >= workers, "workers": workers, "workers_ready": ready}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
