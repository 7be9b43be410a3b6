"""Which model a service answers with, and how it follows the registry's champion.

A service started on ``champion`` looks at the registry every ``serve.follow_s`` seconds. When the champion
has moved (a promotion, a rollback), it downloads (S3) and loads the new version in the background and checks
it (pipeline/serving/runtime.py); only then does :attr:`ModelSource.current` point at it. A request holds the
model it was admitted with to its end, so no request is dropped or answered half by one model and half by
another, and ``X-Model-Version`` says which one answered. A version that fails to load or check is not
swapped in: the service keeps answering with the model it has, logs why, and tries again at the next look.

A service started on a registry version or a model folder is pinned to it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.common.logs import get_logger
from pipeline.prediction.models import resolve_model
from pipeline.registry import CHAMPION, Registry
from pipeline.serving.metrics import ServeMetrics
from pipeline.serving.runtime import Runtime, ServedModel, load_served

__all__ = ["ModelSource"]
log = get_logger(__name__)


class ModelSource:
    """The model answering now (None until the first one is loaded) and why there is none."""

    def __init__(self, registry: Registry, ref: str | None, runtime: Runtime, threads: int, follow_s: float,
                 metrics: ServeMetrics):
        self.registry, self.runtime, self.threads, self.metrics = registry, runtime, threads, metrics
        self.follows = ref in (None, CHAMPION)
        self.ref, self.follow_s = ref, follow_s
        self.current: ServedModel | None = None
        self.problem = "loading the model"
        self._scratch = Path(tempfile.mkdtemp(prefix="tlops-serve-"))  # an S3 registry's downloads
        self._failed: str | None = None  # the version that last failed: logged once, tried again at each look

    async def run(self) -> None:
        """Load the first model, then (following the champion) look for moves until cancelled."""
        while True:
            await asyncio.to_thread(self.refresh)
            if (not self.follows or self.follow_s <= 0) and self.current is not None:
                return  # pinned, or not following: the first model is the only one
            await asyncio.sleep(self.follow_s if self.follow_s > 0 else 1.0)

    def refresh(self) -> None:
        """Load the model the reference names now, if it is not the one answering (a thread, not the loop)."""
        try:
            version, directory = self._wanted()
        except Exception as err:  # noqa: BLE001 (an unreachable registry: keep serving, say why)
            self._fail(None, f"{self.registry.location}: {err}")
            return
        if version is None or (self.current is not None and self.current.version == version):
            return
        try:
            model = load_served(directory, version, self.runtime, self.threads)
        except Exception as err:  # noqa: BLE001 (a version that cannot be served never replaces one that can)
            self._fail(version, f"version {version}: {err}")
            return
        previous, self.current, self.problem, self._failed = self.current, model, "", None
        self.metrics.model.labels(model.version, model.sha256, model.runtime).set(1)
        if previous is not None:
            self.metrics.model.labels(previous.version, previous.sha256, previous.runtime).set(0)
            self.metrics.swaps.inc()
            log.info("serve: swapped %s -> %s (%s)", previous.version, model.version, model.runtime)
            self._drop_download(previous.version)
        else:
            log.info("serve: answering with %s (%s, %d classes)", model.version, model.runtime, len(model.classes))

    def _wanted(self) -> tuple[str | None, Path | None]:
        """(version, local directory) the reference names now; (None, None) with no champion yet."""
        if not self.follows:
            ref = resolve_model(self.ref, self.registry, self._scratch)
            return ref.version, ref.directory
        champion = self.registry.champion()
        if champion is None:
            self.problem = f"{self.registry.location}: no champion yet (nothing promoted)"
            return None, None
        version = champion["version"]
        if self.current is not None and self.current.version == version:
            return version, None
        return version, self.registry.model_dir(version, self._scratch)

    def _fail(self, version: str | None, why: str) -> None:
        if self.current is None:
            self.problem = why
        if version is None or version != self._failed:
            self.metrics.load_failures.inc()
            log.error("serve: %s%s", why, f" (still answering with {self.current.version})" if self.current else "")
        self._failed = version

    def _drop_download(self, version: str) -> None:
        shutil.rmtree(self._scratch / version, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """What /ready answers."""
        if self.current is None:
            return {"ready": False, "problem": self.problem}
        return {"ready": True, "model_version": self.current.version, "model_sha256": self.current.sha256,
                "runtime": self.current.runtime, "classes": self.current.classes, "follows_champion": self.follows}

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)
