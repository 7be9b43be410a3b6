"""`tlops serve` against a plain FastAPI endpoint: throughput and p50/p99 latency at 1, 8 and 32 clients.

Run: ``python -m bench.bench_serve [--model DIR] [--image-size 224] [--clients 1,8,32]
[--seconds 10 | --requests 200] [--images DIR] [--threads N] [--runtime onnx|torchscript|eager]``.

Goal (issue 25): at 32 concurrent clients, `tlops serve` answers at least **2x** the requests per second of the
reference, **at a lower p99** latency, with no failed request, both measured in the same run on this machine.

The two servers, each a subprocess listening on 127.0.0.1, given the same model folder and the same threads:

- ``reference``: a plain FastAPI app defined here (:func:`reference_app`), served by uvicorn: one synchronous
  POST /predict taking one multipart image (``UploadFile`` part ``files``), decoded with PIL
  (pipeline/data/images.py ``decode_rgb``), preprocessed by the model's own
  :class:`~pipeline.models.preprocess.Preprocessing`, run through the eager PyTorch network
  (:class:`~pipeline.models.LoadedModel`, channels_last as our CPU inference) under ``torch.no_grad``, one request
  at a time behind a lock, answering JSON with the top-3 classes. Only the forward pass holds the lock: FastAPI's
  thread pool decodes and preprocesses the waiting requests beside it (the usual way; it helps the reference).
- ``ours``: ``python -m pipeline.cli serve --model DIR --port P`` (its own runtime and batching from params.yaml
  ``serve``; ``--runtime`` overrides the runtime).

Threads: both processes get the environment of pipeline/common/threads.py ``child_env(threads)``
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``TLOPS_THREADS``, default: every core
of this machine); the reference sets torch's threads from it. Each output line says the count.

Model: ``--model DIR`` serves an existing model folder (a registry version: ``model.pt``, ``card.json`` and the
serving exports). Without it, a folder is made in a temporary directory the way the pipeline does: a pretrained
catalog network (``--arch``, default EfficientNet-Lite0) with a fresh head for the 7 photo classes of
tests/support/photos.py, saved with :meth:`LoadedModel.save`, then exported by pipeline/models/export.py
(``export_bundle``: every format checked on the bench's own images, ``export.json``) as the export stage does. The
head is untrained: a forward pass costs the same whatever its weights. ``--keep-model DIR`` keeps that folder.

Load: one asyncio loop in this process drives N clients (``httpx.AsyncClient``, one connection each); each
client sends one image per request, in a loop, the next as soon as the last is answered. Images: ``--images DIR``
(every image file under it), else 48 real photographs' crops (tests/support/photos.py: scikit-image's
photographs, 128-256 px, half PNG, half JPEG). Per server and level: a warm-up (every client sends
``--warmup`` requests, not counted), then ``--seconds`` of load (clients stop starting requests at the deadline;
the wall time runs to the last answer) or ``--requests`` in all. Latency is per request, seen by the client,
from sending to the full answer read; throughput is successful requests / wall seconds; p50 and p99 are over the
successful requests (p99 of 200 requests is about the second worst). A failure (status other than 200, a
transport error, a body without predictions) is counted by kind and reported, never dropped. The levels run
interleaved (1 client: reference, ours; 8 clients: reference, ours; ...) with both servers up, so slow drift
in the machine's other load hits both alike; each row gives the CPU the measured server used and the CPU the
idle one used meanwhile (nearly none, or it stole from the other).

The load generator is not the bottleneck: before the levels it drives the reference app's ``POST /noop``
(the same multipart upload, read and answered ``{}``, no model) with the largest client count; that ceiling
(``generator_ceiling_rps``) is printed, and each row gives the cores this process used while driving the load
(``generator_cpu_cores``). On the 2-core development machine the ceiling is in the hundreds of requests per
second, far above either server on a 224 px network; the generator shares the 2 cores with the server it
drives (as a client on the same machine does), which costs both servers alike.

Output: one JSON line per server x level (requests, failures, throughput, p50/p99/mean/max ms, CPU), then one
``summary`` line: per level ours/reference throughput and p99 ratios, and whether the goal at the largest level
is met. All in bench/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import subprocess
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Sequence

import numpy as np
from fastapi import File, HTTPException, UploadFile  # module level: endpoint annotations resolve here

GOAL_SPEEDUP = 2.0  # ours / reference throughput at the largest client count
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0


# --- the figures (pure) ------------------------------------------------------------------------------------
@dataclass
class LevelResult:
    """What one server answered at one client count."""

    latencies_s: list[float] = field(default_factory=list)  # successful requests only
    failures: Counter = field(default_factory=Counter)  # kind -> count
    wall_s: float = 0.0


def summarize(result: LevelResult) -> dict[str, Any]:
    """Requests, failures, throughput and latency percentiles (ms) of one level.

    Throughput counts successful requests only; percentiles use linear interpolation between the sorted
    latencies (numpy's default); None where there is no successful request.
    """
    ok, failed = len(result.latencies_s), sum(result.failures.values())
    row: dict[str, Any] = {"requests": ok + failed, "ok": ok, "failed": failed,
                           "failures": dict(sorted(result.failures.items())), "wall_s": round(result.wall_s, 3),
                           "throughput_rps": round(ok / result.wall_s, 2) if result.wall_s > 0 else None}
    if ok:
        ms = np.asarray(result.latencies_s) * 1000.0
        row.update(p50_ms=round(float(np.percentile(ms, 50)), 2), p99_ms=round(float(np.percentile(ms, 99)), 2),
                   mean_ms=round(float(ms.mean()), 2), max_ms=round(float(ms.max()), 2))
    else:
        row.update(p50_ms=None, p99_ms=None, mean_ms=None, max_ms=None)
    return row


def compare(reference: dict[int, dict[str, Any]], ours: dict[int, dict[str, Any]],
            speedup: float = GOAL_SPEEDUP) -> dict[str, Any]:
    """Per client count: ours/reference throughput and p99 ratios; the goal at the largest count.

    The goal is met when ours has no failure there, its throughput is at least ``speedup`` times the
    reference's and its p99 is lower. None where a figure is missing (every request of a side failed).
    """
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    levels = sorted(set(reference) & set(ours))
    per_level = {str(n): {"throughput_ratio": ratio(ours[n]["throughput_rps"], reference[n]["throughput_rps"]),
                          "p99_ratio": ratio(ours[n]["p99_ms"], reference[n]["p99_ms"]),
                          "ours_failed": ours[n]["failed"], "reference_failed": reference[n]["failed"]}
                 for n in levels}
    if not levels:
        return {"levels": per_level, "goal_clients": None, "goal_met": None}
    top = levels[-1]
    ours_top = ours[top]
    speed, p99 = per_level[str(top)]["throughput_ratio"], per_level[str(top)]["p99_ratio"]
    met = (ours_top["failed"] == 0 and speed is not None and speed >= speedup and p99 is not None and p99 < 1.0)
    return {"levels": per_level, "goal_clients": top,
            "goal": f"throughput >= {speedup:g}x the reference's, lower p99, no failure",
            "goal_met": bool(met)}


def parse_clients(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32] (sorted, distinct, each >= 1)."""
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--clients {text!r}: give positive counts, e.g. 1,8,32")
    return counts


# --- the reference server ----------------------------------------------------------------------------------
def reference_app(model_dir: Path) -> Any:
    """The plain FastAPI app: POST /predict (one image, eager PyTorch, one request at a time), GET /health and
    /ready, and POST /noop (the upload read and answered without a model: the load generator's ceiling)."""
    import torch
    from fastapi import FastAPI

    from pipeline.common.device import memory_format
    from pipeline.data.images import decode_rgb
    from pipeline.models import LoadedModel

    model = LoadedModel.load(model_dir, "cpu")
    transform, layout = model.preprocessing.transform(), memory_format(torch.device("cpu"))
    lock = threading.Lock()
    app = FastAPI(title="bench_serve reference")

    def classify(data: bytes) -> dict[str, Any]:
        image = decode_rgb(data)
        batch = transform(image).unsqueeze(0).contiguous(memory_format=layout)
        with lock, torch.no_grad():
            probs = torch.softmax(model.network(batch), dim=1)[0]
        top = torch.topk(probs, min(3, len(probs)))
        return {"predicted": model.classes[int(top.indices[0])], "confidence": float(top.values[0]),
                "top_k": [{"class": model.classes[int(i)], "probability": float(p)}
                          for p, i in zip(top.values, top.indices)]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict[str, Any]:
        return {"ready": True, "model_version": str(model_dir), "runtime": "eager"}

    @app.post("/noop")
    def noop(files: Annotated[UploadFile, File()]) -> dict[str, Any]:
        files.file.read()
        return {}

    @app.post("/predict")
    def predict(files: Annotated[UploadFile, File()]) -> dict[str, Any]:
        try:
            answer = classify(files.file.read())
        except Exception as error:  # an undecodable upload: the client's fault
            raise HTTPException(422, f"{files.filename}: {error}") from error
        return {"predictions": [{"file": files.filename, **answer}]}

    return app


def serve_reference(model_dir: Path, port: int) -> None:
    """Run :func:`reference_app` under uvicorn on 127.0.0.1:``port`` with this process's thread share."""
    import uvicorn

    from pipeline.common.logs import setup_logging
    from pipeline.common.threads import applied, current

    setup_logging("WARNING")
    with applied(current()):
        uvicorn.run(reference_app(model_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- servers as subprocesses -------------------------------------------------------------------------------
@dataclass
class Server:
    """A server subprocess and how to reach it."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and its children so far (0 once it has exited)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.Error:
            return 0.0

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its stdout + stderr."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(threads: int) -> dict[str, str]:
    """The environment of both servers: the same thread share, no auth variable (loopback only), no proxy."""
    from pipeline.common.threads import child_env

    env = {**os.environ, **child_env(threads), "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost"}
    for name in ("TLOPS_SERVE_AUTH", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(name, None)
    return env


def start_server(name: str, command: Sequence[str], port: int, env: dict[str, str], logs: Path) -> Server:
    """Start ``command`` (its output to a log file under ``logs``) and return it unchecked."""
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    return Server(name, process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Poll GET /ready until 200; returns its JSON. Raises RuntimeError with the log's tail when the process
    exits or the time runs out."""
    import httpx

    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} server exited with {server.process.returncode} before it was ready:"
                               f"\n{server.log_tail()}")
        try:
            answer = httpx.get(server.url + "/ready", timeout=5.0)
            if answer.status_code == 200:
                return answer.json()
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as error:
            last = type(error).__name__
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} server not ready after {timeout:.0f}s (last: {last}):\n{server.log_tail()}")


def stop_server(server: Server) -> int | None:
    """SIGTERM the server (its process group: uvicorn workers too), SIGKILL after 20 s; returns its exit code."""
    import signal

    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
    return server.process.returncode


# --- the load ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """One image file to send."""

    name: str
    data: bytes

    @property
    def mime(self) -> str:
        return MIME.get(Path(self.name).suffix.lower(), "application/octet-stream")


async def _drive(url: str, uploads: Sequence[Upload], clients: int, warmup: int, seconds: float | None,
                 requests: int | None, check_body: bool) -> LevelResult:
    import httpx

    result = LevelResult()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        async def send(index: int) -> tuple[float, str | None]:
            upload = uploads[index % len(uploads)]
            started = time.perf_counter()
            try:
                answer = await client.post(url, files={"files": (upload.name, upload.data, upload.mime)})
                body = answer.content
            except httpx.HTTPError as error:
                return time.perf_counter() - started, type(error).__name__
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                return elapsed, f"http_{answer.status_code}"
            if check_body:
                try:
                    import json

                    predictions = json.loads(body)["predictions"]
                    if not predictions or "predicted" not in predictions[0]:
                        return elapsed, "no_prediction"
                except (ValueError, KeyError, TypeError):
                    return elapsed, "bad_body"
            return elapsed, None

        async def warm(worker: int) -> None:
            for j in range(warmup):
                await send(worker * 7919 + j)

        await asyncio.gather(*(warm(w) for w in range(clients)))
        issued = 0
        started = time.perf_counter()
        deadline = started + seconds if seconds is not None else None

        async def loop(worker: int) -> None:
            nonlocal issued
            j = 0
            while True:
                if requests is not None and issued >= requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                issued += 1
                elapsed, failure = await send(worker * 104729 + j)
                j += 1
                if failure is None:
                    result.latencies_s.append(elapsed)
                else:
                    result.failures[failure] += 1

        await asyncio.gather(*(loop(w) for w in range(clients)))
        result.wall_s = time.perf_counter() - started
    return result


def drive(url: str, uploads: Sequence[Upload], clients: int, *, warmup: int = 2, seconds: float | None = None,
          requests: int | None = None, check_body: bool = True) -> tuple[LevelResult, float]:
    """Run ``clients`` concurrent clients against ``url``; returns the result and the cores this process used
    meanwhile (its CPU seconds / wall seconds, warm-up included)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = asyncio.run(_drive(url, uploads, clients, warmup, seconds, requests, check_body))
    return result, (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9)


# --- inputs ------------------------------------------------------------------------------------------------
def folder_uploads(folder: Path, limit: int = 256) -> list[Upload]:
    """Up to ``limit`` image files under ``folder`` (sorted by path)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [Upload(str(p.relative_to(folder)), p.read_bytes()) for p in files]


def photo_uploads(per_photo: int = 7, seed: int = 0) -> list[Upload]:
    """Crops of scikit-image's photographs (tests/support/photos.py), every other one re-encoded as JPEG."""
    from PIL import Image

    from tests.support.photos import PHOTOS, photo_crops

    rng = np.random.default_rng(seed)
    uploads = []
    for name in PHOTOS:
        for j, png in enumerate(photo_crops(name, per_photo, rng)):
            if j % 2:
                buffer = io.BytesIO()
                Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=90)
                uploads.append(Upload(f"{name}-{j}.jpg", buffer.getvalue()))
            else:
                uploads.append(Upload(f"{name}-{j}.png", png))
    return uploads


def make_model(out: Path, arch: str, image_size: int, uploads: Sequence[Upload]) -> dict[str, Any]:
    """A servable model folder at ``out``: pretrained ``arch`` with a fresh head for the photo classes, saved,
    with the export stage's serving files (TorchScript, ONNX, export.json) checked on ``uploads``' images.
    Returns the export checks."""
    import torch

    from pipeline.config import ExportParams
    from pipeline.data.images import decode_rgb
    from pipeline.models import LoadedModel
    from pipeline.models.export import export_bundle
    from tests.support.photos import PHOTOS

    cfg = ExportParams()
    model = LoadedModel.pretrained(arch, len(PHOTOS), image_size, classes=list(PHOTOS))
    model.network.eval()
    saved = out.with_name(out.name + ".model")
    model.save(saved, {"bench": "bench_serve: pretrained features, untrained head (serving cost only)"})
    transform = model.preprocessing.transform()
    images = torch.stack([transform(decode_rgb(u.data)) for u in uploads[:32]])
    checks = export_bundle(model, saved, images, out, tuple(cfg.formats), cfg.atol, {"candidate": "bench"})
    shutil.rmtree(saved)
    return checks


@contextlib.contextmanager
def model_folder(ns: argparse.Namespace, uploads: Sequence[Upload], report: Any) -> Iterator[Path]:
    """``--model`` as given, else a fresh servable folder (kept at ``--keep-model`` when given)."""
    if ns.model:
        yield ns.model.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="bench_serve-") as tmp:
        out = (ns.keep_model or Path(tmp) / "model").resolve()
        started = time.perf_counter()
        checks = make_model(out, ns.arch, ns.image_size, uploads)
        report.emit(made_model=str(out), arch=ns.arch, image_size=ns.image_size,
                    seconds=round(time.perf_counter() - started, 1),
                    exports={name: {"max_abs_logit_diff": c["max_abs_logit_diff"], "images": c["images"]}
                             for name, c in checks.items()})
        yield out


# --- main --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a servable model folder (default: make one)")
    parser.add_argument("--arch", default="efficientnet_lite0", help="catalog network of the made model")
    parser.add_argument("--image-size", type=int, default=224, help="input side of the made model")
    parser.add_argument("--keep-model", type=Path, default=None, help="write the made model here and keep it")
    parser.add_argument("--clients", type=parse_clients, default=[1, 8, 32], help="client counts, e.g. 1,8,32")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--seconds", type=float, default=None, help="seconds of load per server and level "
                                                                    "(default 10)")
    amount.add_argument("--requests", type=int, default=None, help="requests per server and level instead")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted requests per client before each level")
    parser.add_argument("--images", type=Path, default=None, help="folder of images to send (default: photo crops)")
    parser.add_argument("--threads", type=int, default=None, help="threads of each server (default: every core)")
    parser.add_argument("--runtime", choices=("onnx", "torchscript", "eager"), default=None,
                        help="ours: `tlops serve --runtime` (default: params.yaml serve.runtime)")
    parser.add_argument("--servers", default="reference,ours", help="which to run: reference, ours or both")
    parser.add_argument("--reference-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.reference_server:  # the reference's own process (started by the bench)
        serve_reference(ns.model, ns.port)
        return 0
    if ns.seconds is None and ns.requests is None:
        ns.seconds = 10.0
    servers = [s.strip() for s in ns.servers.split(",") if s.strip()]
    if not servers or set(servers) - {"reference", "ours"}:
        parser.error(f"--servers {ns.servers!r}: reference, ours or both")

    from bench.report import BenchReport
    from pipeline.common.logs import setup_logging
    from pipeline.common.threads import machine_cores

    setup_logging("WARNING")
    threads = ns.threads or machine_cores()
    report = BenchReport("bench_serve")
    uploads = folder_uploads(ns.images) if ns.images else photo_uploads()
    amount = {"seconds": ns.seconds} if ns.seconds is not None else {"requests": ns.requests}
    logs_dir = tempfile.TemporaryDirectory(prefix="bench_serve-logs-")
    with model_folder(ns, uploads, report) as model_dir, logs_dir as logs:
        env, started = server_env(threads), {}
        try:
            for name in servers:
                port = free_port()
                if name == "reference":
                    command = [sys.executable, "-m", "bench.bench_serve", "--reference-server",
                               "--model", str(model_dir), "--port", str(port)]
                else:
                    command = [sys.executable, "-m", "pipeline.cli", "serve", "--model", str(model_dir),
                               "--host", "127.0.0.1", "--port", str(port)]
                    command += ["--runtime", ns.runtime] if ns.runtime else []
                started[name] = start_server(name, command, port, env, Path(logs))
            ready = {name: wait_ready(server) for name, server in started.items()}
            report.emit(setup={"model": str(model_dir), "threads_per_server": threads, "cores": os.cpu_count(),
                               "thread_env": "OMP/MKL/OPENBLAS_NUM_THREADS and TLOPS_THREADS = %d" % threads,
                               "images": len(uploads), "image_bytes_mean": int(np.mean([len(u.data) for u in uploads])),
                               "clients": ns.clients, **amount, "warmup_per_client": ns.warmup,
                               "load_average": [round(v, 2) for v in os.getloadavg()]},
                        ready={name: {k: v for k, v in answer.items() if k != "ready"}
                               for name, answer in ready.items()})
            if "reference" in started:
                ceiling, cpu = drive(started["reference"].url + "/noop", uploads, ns.clients[-1], warmup=1,
                                     seconds=min(ns.seconds or 3.0, 3.0), check_body=False)
                figures = summarize(ceiling)
                report.emit(generator_ceiling_rps=figures["throughput_rps"], clients=ns.clients[-1],
                            p50_ms=figures["p50_ms"], failed=figures["failed"], generator_cpu_cores=round(cpu, 2),
                            note="POST /noop of the reference app: the same uploads, no model")
            rows: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in started}
            for clients in ns.clients:
                for name, server in started.items():
                    others = [s for s in started.values() if s is not server]
                    cpu_before = server.cpu_seconds(), [s.cpu_seconds() for s in others]
                    result, generator_cpu = drive(server.url + "/predict", uploads, clients, warmup=ns.warmup,
                                                  seconds=ns.seconds, requests=ns.requests)
                    figures = summarize(result)
                    server_cpu = server.cpu_seconds() - cpu_before[0]
                    idle_cpu = sum(s.cpu_seconds() for s in others) - sum(cpu_before[1])
                    rows[name][clients] = figures
                    report.emit(server=name, clients=clients, threads=threads, **figures,
                                server_cpu_s=round(server_cpu, 2), idle_server_cpu_s=round(idle_cpu, 2),
                                generator_cpu_cores=round(generator_cpu, 2),
                                load_average_1m=round(os.getloadavg()[0], 2),
                                alive=server.process.poll() is None)
                    if figures["failed"]:
                        print(f"# {name}: {figures['failed']} failed request(s) at {clients} clients "
                              f"{figures['failures']}; its log's tail:\n{server.log_tail(10)}", flush=True)
            if set(rows) == {"reference", "ours"}:
                report.emit(summary=compare(rows["reference"], rows["ours"]), threads_per_server=threads,
                            runtime=ready["ours"].get("runtime"))
        finally:
            for server in started.values():
                code = stop_server(server)
                if code not in (0, -15, None):
                    print(f"# {server.name} server exited with {code}; its log's tail:\n{server.log_tail()}",
                          flush=True)
    print(f"results: {report.save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
