"""The HTTP service of ``tlops serve``: ``POST /predict``, ``/health``, ``/ready`` and ``/metrics``.

``POST /predict`` takes one or many images as multipart parts named ``files``. Each is held to the validation
gate's per-image rules as ``tlops predict`` holds it (it decodes within ``validate.max_pixels``, its sides
and mode are in bounds: pipeline/validation/profile.py); a refused image makes the request a 422 naming each
refused file, its rule and value (``?partial=true``: a 200 where refused images have ``status`` refused). The
others are preprocessed as the model was trained, batched with other requests' images (batching.py) and
answered with classes, probabilities, the top ``top_k`` and the model's version and digest; the header
``X-Model-Version`` names the model that answered. A body over ``serve.max_request_mb`` or more than
``serve.max_images`` images is a 413, a full queue a 503 with ``Retry-After``.

With the variable ``serve.auth_env`` names set to ``user:password``, ``/predict`` and ``/metrics`` ask for
HTTP basic auth; ``/health`` (the process is up) and ``/ready`` (a model is loaded and checked, in every worker
process when there are several: readiness.py) stay open for probes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from PIL import Image
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.registry import open_registry
from pipeline.serving.readiness import PUBLISH_S, fleet_status, publish
from pipeline.serving.batching import Batcher, QueueFull
from pipeline.serving.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from pipeline.serving.runtime import Runtime, ServedModel
from pipeline.serving.samples import SampleWriter
from pipeline.serving.source import ModelSource
from pipeline.validation.profile import ProfileSettings, admit_image, image_refusal

__all__ = ["ServeConfig", "create_app", "MODEL_VERSION_HEADER"]
log = get_logger(__name__)
MODEL_VERSION_HEADER = "X-Model-Version"
_SAMPLE_TICK_S = 1.0  # how often a due sampled batch is looked for


@dataclass(frozen=True)
class ServeConfig:
    """What one service process needs: the project, its params, the model reference and the runtime."""

    root: Path  # the main checkout: a folder registry or sample store is relative to it
    params: Params
    model: str | None  # None / "champion": follow the registry's champion
    runtime: Runtime
    threads: int  # compute threads of this process
    auth: str | None  # "user:password", or None: no auth
    workers: int = 1  # the service's processes (uvicorn workers), this one among them
    status_dir: Path | None = None  # with several: where each publishes its status for /ready (readiness.py)


class _Service:
    """The state one app holds: its model source, batcher, sampler and metrics."""

    def __init__(self, config: ServeConfig):
        cfg = config.params.serve
        self.config, self.cfg = config, cfg
        self.metrics = ServeMetrics()
        registry = open_registry(config.params.promote.registry, config.root)
        self.source = ModelSource(registry, config.model, config.runtime, config.threads, cfg.follow_s, self.metrics)
        self.batcher = Batcher(cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue, self.metrics)
        self.sampler = (SampleWriter(cfg.sample_store, config.root, cfg.sample_rate, cfg.sample_batch_images,
                                     cfg.sample_batch_s) if cfg.sample_rate > 0 and cfg.sample_store else None)
        validate = config.params.validate_
        # one bomb limit for the whole process: the admissions running side by side then never change PIL's
        # process-wide setting under each other (the header check of profile.py holds the limit in any case)
        Image.MAX_IMAGE_PIXELS = validate.max_pixels
        self.rules = validate
        self.profile = ProfileSettings(max_pixels=validate.max_pixels, stats_max_side=validate.stats_max_side)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        torch.set_num_threads(self.config.threads)  # preprocessing (and the eager runtime) compute with the share
        self._tasks = [asyncio.create_task(self.source.run(), name="model-source"),
                       asyncio.create_task(self.batcher.run(), name="batcher")]
        if self.sampler is not None:
            self._tasks.append(asyncio.create_task(self._write_samples(), name="samples"))
        if self.config.status_dir is not None:
            self._tasks.append(asyncio.create_task(self._publish_status(), name="status"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.batcher.close()
        self.source.close()
        if self.sampler is not None:
            await asyncio.to_thread(self.sampler.flush)  # the open batch is kept, not lost with the process

    async def _publish_status(self) -> None:
        while True:
            try:
                await asyncio.to_thread(publish, self.config.status_dir, self.source.status())
            except OSError as err:  # a full disk: /ready then says not ready (stale), the answers go on
                log.error("serve: writing this worker's status to %s failed: %s", self.config.status_dir, err)
            await asyncio.sleep(PUBLISH_S)

    def ready(self) -> dict[str, Any]:
        """What /ready answers: this process's model, and with several workers whether every one is ready."""
        status = self.source.status()
        if self.config.status_dir is None:
            return status
        return fleet_status(self.config.status_dir, self.config.workers, status)

    async def _write_samples(self) -> None:
        while True:
            await asyncio.sleep(_SAMPLE_TICK_S)
            if self.sampler.ready():
                try:
                    await asyncio.to_thread(self.sampler.flush)
                except Exception as err:  # noqa: BLE001 (a store that fails must not stop the answers)
                    log.error("serve: writing sampled images to %s failed: %s", self.sampler.where, err)

    def admit(self, uploads: list[tuple[str, bytes]], model: ServedModel
              ) -> tuple[list[dict[str, Any]], list[torch.Tensor], list[tuple[bytes, str | None]]]:
        """Each upload held to the gate's per-image rules and, if it passes, preprocessed for ``model``: the rows
        (refused ones with their rule and reason), the inputs and the accepted bytes (a thread, not the loop)."""
        transform = model.preprocessing.transform()
        rows, inputs, accepted = [], [], []
        for name, data in uploads:
            profile, rgb = admit_image(data, self.profile)
            refusal, warning = image_refusal(profile, self.rules)
            row = {"file": name, "id": profile["sha256"][:16], "warning": warning}
            if refusal is not None or rgb is None:
                reason = refusal or profile.get("error", "does not decode")
                rows.append({**row, "status": "refused", "rule": reason.split(":")[0], "reason": reason})
                continue
            rows.append({**row, "status": "predicted"})
            inputs.append(transform(rgb))
            accepted.append((data, profile.get("format")))
        return rows, inputs, accepted


def create_app(config: ServeConfig) -> FastAPI:
    """The service's app (served by uvicorn: pipeline/serving/server.py)."""
    service = _Service(config)
    cfg = service.cfg

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="tlops serve", summary="the champion image classifier over HTTP", lifespan=lifespan)
    app.add_middleware(_PredictGuard, limit=int(cfg.max_request_mb * 2**20), metrics=service.metrics)
    app.state.service = service
    need_auth = Depends(_basic_auth(config.auth))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        status = service.ready()
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @app.get("/metrics", dependencies=[need_auth])
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", dependencies=[need_auth])
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, description="classes answered per "
                                                                                        "image"),
                      partial: bool = Query(False, description="answer the images that pass when others are "
                                                                "refused (200), instead of a 422")) -> JSONResponse:
        model = service.source.current
        if model is None:
            return _error(503, f"no model loaded yet: {service.source.problem}", retry=True)
        uploads = await _uploads(request, cfg.max_images)
        if isinstance(uploads, JSONResponse):
            return uploads
        rows, inputs, accepted = await asyncio.to_thread(service.admit, uploads, model)
        refused = [row for row in rows if row["status"] == "refused"]
        for row in refused:
            service.metrics.refusals.labels(row["rule"]).inc()
        service.metrics.images.labels("refused").inc(len(refused))
        headers = {MODEL_VERSION_HEADER: model.version}
        if refused and not partial:
            return JSONResponse({"detail": [{k: row[k] for k in ("file", "rule", "reason")} for row in refused],
                                 "model_version": model.version}, status_code=422, headers=headers)
        if inputs:
            try:
                probs = await service.batcher.submit(model, torch.stack(inputs))
            except QueueFull:
                return _error(503, f"busy: {cfg.max_queue} requests wait for the model (serve.max_queue)", retry=True)
            _answer(service, model, [row for row in rows if row["status"] == "predicted"], probs,
                    min(top_k or cfg.top_k, len(model.classes)), accepted)
        return JSONResponse({"model_version": model.version, "model_sha256": model.sha256, "runtime": model.runtime,
                             "predictions": rows}, headers=headers)

    return app


def _answer(service: _Service, model: ServedModel, rows: list[dict[str, Any]], probs: np.ndarray, k: int,
            accepted: list[tuple[bytes, str | None]]) -> None:
    """Fill the predicted rows in place (classes, probabilities, top-k), count them and offer them for sampling."""
    order = np.argsort(-probs, axis=1, kind="stable")
    for row, p, ranked, (data, image_format) in zip(rows, probs, order, accepted):
        predicted = model.classes[ranked[0]]
        row.update(predicted=predicted, confidence=float(p[ranked[0]]),
                   probabilities={name: float(v) for name, v in zip(model.classes, p)},
                   top_k=[{"class": model.classes[c], "probability": float(p[c])} for c in ranked[:k]])
        service.metrics.predictions.labels(predicted).inc()
        service.metrics.confidence.observe(row["confidence"])
        if service.sampler is not None and service.sampler.offer(
                data, image_format, {"predicted": predicted, "confidence": row["confidence"],
                                     "model_version": model.version}):
            service.metrics.sampled.inc()
    service.metrics.images.labels("predicted").inc(len(rows))


async def _uploads(request: Request, max_images: int) -> list[tuple[str, bytes]] | JSONResponse:
    """The request's ``files`` parts as (file name, bytes), or the error answer."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _error(415, "send images as multipart/form-data, one part named 'files' per image")
    try:
        form = await request.form(max_files=max_images + 1, max_fields=max_images + 16)
    except MultiPartException as err:
        status = 413 if "Too many" in str(err) else 400
        return _error(status, f"{err} (at most {max_images} images a request: serve.max_images)")
    files = [part for part in form.getlist("files") if isinstance(part, UploadFile)]
    if len(files) > max_images:
        return _error(413, f"{len(files)} images: at most {max_images} a request (serve.max_images)")
    if not files:
        return _error(422, "no images: send one multipart part named 'files' per image")
    return [(part.filename or f"file-{i}", await part.read()) for i, part in enumerate(files)]


def _error(status: int, detail: str, retry: bool = False) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers={"Retry-After": "1"} if retry else None)


def _basic_auth(expected: str | None):
    """A dependency that lets a request through when no auth is configured or its basic credentials match."""
    token = expected.encode() if expected else None

    async def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(value, validate=True) if scheme.lower() == "basic" else b""
        except (binascii.Error, ValueError):
            given = b""
        if not secrets.compare_digest(given, token):
            raise HTTPException(401, "authentication required (HTTP basic, the serve.auth_env credentials)",
                                headers={"WWW-Authenticate": 'Basic realm="tlops serve"'})

    return check


class _PredictGuard:
    """On ``/predict``: refuse a body over ``limit`` bytes with a 413 (by its Content-Length, and while it
    streams in when it has none), and count every answer and its latency."""

    def __init__(self, app: ASGIApp, limit: int, metrics: ServeMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), {"code": 500}
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = _error(413, f"request body over {self.limit / 2**20:g} MiB (serve.max_request_mb)")
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.limit:
                await self._send(too_large, scope, receive, send, status)
                return
            received = 0

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
                return message

            async def tracked(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await self.app(scope, counted, tracked)
            except _TooLarge:
                await self._send(too_large, scope, receive, send, status)
        finally:
            self.metrics.requests.labels(str(status["code"])).inc()
            self.metrics.latency.observe(time.perf_counter() - started)

    @staticmethod
    async def _send(response: Response, scope: Scope, receive: Receive, send: Send, status: dict) -> None:
        status["code"] = response.status_code
        await response(scope, receive, send)


class _TooLarge(Exception):
    """The body went over the limit while it streamed in."""

