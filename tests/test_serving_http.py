"""`tlops serve`: a real server process on 127.0.0.1, called with a real HTTP client (httpx).

Answers equal `tlops predict`'s; refused, oversized and unauthenticated requests get their status and reason
while the service stays up; a promotion during a stream of requests swaps the model without failing one; and
the images it samples land as a batch that the drift stage reads and checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.common.io import read_json
from pipeline.config import validate_params
from pipeline.data.sources import open_source
from pipeline.evaluation.assess import scorable_shift
from pipeline.models.preprocess import Preprocessing
from pipeline.registry import open_registry
from pipeline.serving.batching import Batcher, QueueFull
from pipeline.serving.metrics import ServeMetrics
from pipeline.serving.readiness import STALE_S, fleet_status, publish
from pipeline.serving.runtime import ServedModel
from pipeline.serving.samples import (_CHECKED_RUN, BATCH_CARD, CHECKED, SampleWriter, SampledBatch, listing_path,
                                      mark_checked, unchecked_batches, write_listing)
from tests.support.drift_chain import build_chain, run_drift
from tests.support import badimages as bad
from tests.support.photos import photo_crops, write_photo_folder
from tests.support.s3server import make_client
from tests.support.served import write_bundle

ROOT = Path(__file__).resolve().parents[1]
TLOPS = Path(sys.executable).parent / "tlops"
CLASSES = ["chelsea", "coffee", "brick"]
AUTH = ("reader", "s3cret-pass")
ATOL = 1e-3  # the bundles' export.atol: served (ONNX, TorchScript) logits within it of PyTorch's


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos"), CLASSES, 6, seed=3)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, photos) -> dict[str, Path]:
    """Two bundles of the same classes with different heads: what two promoted runs would register."""
    work = tmp_path_factory.mktemp("bundles")
    images = sorted(photos.rglob("*.png"))[:8]
    return {name: write_bundle(work / name, CLASSES, images, seed=seed) for name, seed in (("v1", 0), ("v2", 1))}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, photos, bundles) -> pd.DataFrame:
    """`tlops predict` on the photos with bundle v1, by image id."""
    out = tmp_path_factory.mktemp("predict") / "out"
    assert main(["predict", str(photos), "--model", str(bundles["v1"]), "--out", str(out)]) == 0
    return pd.read_parquet(out / "predictions.parquet").set_index("id")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _server(*args: str, auth: bool = False, log: Path) -> Iterator[str]:
    """`tlops serve` on a free loopback port until /ready answers 200; its base URL. Stopped with SIGINT."""
    port = _free_port()
    env = {**os.environ, "TLOPS_SERVE_AUTH": ":".join(AUTH)} if auth else {
        k: v for k, v in os.environ.items() if k != "TLOPS_SERVE_AUTH"}
    with open(log, "wb") as out:
        process = subprocess.Popen([str(TLOPS), "serve", "--port", str(port), *args], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"tlops serve exited {process.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready after 120 s:\n{log.read_text()}"
            time.sleep(0.3)
        yield url
    finally:
        process.send_signal(2)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.name, path.read_bytes(), "image/png")) for path in paths]


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.slow
def test_answers_over_http_equal_tlops_predict(photos, bundles, predicted, tmp_path):
    images = sorted(photos.rglob("*.png"))
    with _server("--model", str(bundles["v1"]), "--workers", "2", log=tmp_path / "serve.log") as url:
        ready = httpx.get(f"{url}/ready").json()  # 200 only once both workers have loaded the model
        whole = httpx.post(f"{url}/predict", files=_files(images), params={"top_k": 2}, timeout=60)
        assert whole.status_code == 200, whole.text
        # one image a request, all at once: batched together by the service, each answer still its own
        with httpx.Client(timeout=60) as client, ThreadPool(len(images)) as pool:
            singles = pool.map(lambda path: client.post(f"{url}/predict", files=_files([path])).json(), images)
        health = httpx.get(f"{url}/health").json()
    body = whole.json()
    assert whole.headers["X-Model-Version"] == body["model_version"] == str(bundles["v1"])
    assert body["runtime"] == "onnx" and body["model_sha256"] == read_json(bundles["v1"] / "card.json")[
        "state_dict_sha256"]
    assert health == {"status": "ok"}
    assert ready["ready"] and ready["workers"] == ready["workers_ready"] == 2, ready
    rows = body["predictions"]
    assert [row["file"] for row in rows] == [path.name for path in images]
    for row, single in zip(rows, singles):
        expected = predicted.loc[row["id"]]
        assert row["status"] == "predicted" and row["predicted"] == expected["predicted"]
        assert row["confidence"] == pytest.approx(expected["confidence"], abs=ATOL)
        assert row["top_k"][1]["class"] == expected["class_2"]
        assert row["top_k"][1]["probability"] == pytest.approx(expected["prob_2"], abs=ATOL)
        assert len(row["top_k"]) == 2 and sum(row["probabilities"].values()) == pytest.approx(1)
        (alone,) = single["predictions"]
        assert alone["id"] == row["id"] and alone["predicted"] == row["predicted"]
        assert alone["probabilities"] == pytest.approx(row["probabilities"], abs=1e-5)


class ThreadPool:
    """A few threads mapping a function over items (the concurrent clients of a test)."""

    def __init__(self, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(threads)

    def __enter__(self) -> "ThreadPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()

    def map(self, fn, items) -> list:
        return list(self._pool.map(fn, items))


@pytest.mark.slow
def test_refusals_auth_limits_and_sampling(photos, bundles, predicted, tmp_path):
    good = sorted(photos.rglob("*.png"))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    bad = {"garbage.png": b"not an image at all",
           "truncated.png": good[0].read_bytes()[:60],
           "tiny.png": _png(Image.new("L", (4, 4))),
           "float.tiff": _png(Image.new("F", (32, 32)), "TIFF")}
    store = tmp_path / "samples"
    args = ["--model", str(bundles["v1"]), "--runtime", "torchscript", "--set", "serve.max_request_mb=0.25",
            "--set", "serve.max_images=4", "--set", "serve.sample_rate=1", "--set", f"serve.sample_store={store}",
            "--set", "serve.sample_batch_images=3"]
    with _server(*args, auth=True, log=tmp_path / "serve.log") as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/ready").status_code == 200 and client.get("/health").status_code == 200  # probes: open
        assert client.post("/predict", files=_files(good[:1])).status_code == 401
        assert client.post("/predict", files=_files(good[:1]), auth=("reader", "wrong")).status_code == 401
        assert client.get("/metrics").status_code == 401
        client.auth = AUTH

        refused = {}
        for name, data in bad.items():
            answer = client.post("/predict", files=[("files", (name, data, "application/octet-stream"))])
            assert answer.status_code == 422, (name, answer.text)
            (refused[name],) = answer.json()["detail"]
            assert refused[name]["file"] == name
        assert refused["garbage.png"]["rule"] == "decodes"
        assert refused["truncated.png"]["rule"] == "decodes"
        assert refused["tiny.png"]["rule"] == "width_in_bounds" and "4" in refused["tiny.png"]["reason"]
        assert refused["float.tiff"]["rule"] == "mode_convertible" and "F" in refused["float.tiff"]["reason"]

        mixed = [("files", ("garbage.png", bad["garbage.png"], "image/png")), *_files(good[:1])]
        assert client.post("/predict", files=mixed).status_code == 422  # one refused image refuses the request
        partial = client.post("/predict", files=mixed, params={"partial": "true"})
        assert partial.status_code == 200
        assert [row["status"] for row in partial.json()["predictions"]] == ["refused", "predicted"]

        big = client.post("/predict", files=[("files", ("noise.png", _png(noise), "image/png"))])
        assert big.status_code == 413 and "serve.max_request_mb" in big.json()["detail"]
        many = client.post("/predict", files=_files(good[:5]))
        assert many.status_code == 413 and "serve.max_images" in many.json()["detail"]
        assert client.post("/predict", content=good[0].read_bytes(),
                           headers={"content-type": "image/png"}).status_code == 415

        # still up, still right (TorchScript answers as predict does), and the images it answered are sampled
        answered = client.post("/predict", files=_files(good[1:4]))
        assert answered.status_code == 200
        for row in answered.json()["predictions"]:
            assert row["predicted"] == predicted.loc[row["id"], "predicted"]
            assert row["confidence"] == pytest.approx(predicted.loc[row["id"], "confidence"], abs=ATOL)
        metrics = client.get("/metrics").text
        deadline = time.monotonic() + 20
        while not _unchecked(store, ROOT) and time.monotonic() < deadline:
            time.sleep(0.2)
    for line in ('tlops_serve_refusals_total{rule="decodes"} 4.0',
                 'tlops_serve_refusals_total{rule="mode_convertible"} 1.0',
                 'tlops_serve_requests_total{status="413"} 2.0', 'tlops_serve_requests_total{status="401"} 2.0',
                 "tlops_serve_request_seconds_bucket", "tlops_serve_confidence_bucket",
                 'tlops_serve_sampled_images_total 4.0', "tlops_serve_model_info{"):
        assert line in metrics, line

    [batch] = _unchecked(store, ROOT)
    assert Path(batch.location).parent == store
    files = sorted(p.name for p in Path(batch.location).iterdir())
    card = read_json(Path(batch.location) / BATCH_CARD)
    kept = {row["id"] for row in card["rows"]}
    # the one image of the partial answer and the three answered last; never a refused image's bytes
    assert kept == {row["id"] for row in answered.json()["predictions"]} | {partial.json()["predictions"][1]["id"]}
    assert len(files) == 5 and BATCH_CARD in files and batch.images == 4
    assert card["model_versions"] == [str(bundles["v1"])]


def _unchecked(store: str | Path, base: Path) -> list[SampledBatch]:
    """The batches the next drift check reads, with no cap on their images."""
    return unchecked_batches(str(store), base, max_images=10**9)[0]


def _sampled(writer: SampleWriter, images: list[bytes]) -> str:
    """Offer ``images`` (every one kept at rate 1) and close the batch; its name."""
    for data in images:
        writer.offer(data, "PNG", {"predicted": "x", "confidence": 0.5, "model_version": "run-a"})
    return writer.flush()


@pytest.mark.slow
def test_sampled_batches_are_what_the_drift_stage_checks(photos, tmp_path):
    """A batch as the service writes it (unlabelled, its card beside the images) is read by shift as the current
    set and checked by drift; once marked checked, no check reads it again. Two batches waiting are read as one
    set through a table of their images, an image sent in both counted once."""
    store = tmp_path / "samples"
    writer = SampleWriter(str(store), ROOT, rate=1.0, batch_images=100, batch_s=3600, seed=0)
    name = _sampled(writer, [path.read_bytes() for path in sorted(photos.rglob("*.png"))])
    [batch] = _unchecked(store, ROOT)
    assert batch.name == name and batch.images == 18 and len(batch.files) == 18

    chain = build_chain(tmp_path / "chain", photos, batch=Path(batch.location))
    current = pd.read_parquet(chain["current"] / "manifest.parquet")
    assert len(current) == 18 and set(current["label"]) == {""} and set(current["label_idx"]) == {-1}
    assert run_drift(chain, tmp_path / "drift") == 0
    drift = read_json(tmp_path / "drift" / "drift.json")
    assert drift["n_current"] == 18 and isinstance(drift["drift_detected"], bool)
    assert (tmp_path / "drift" / "reports").is_dir()

    mark_checked(str(store), ROOT, batch.name, {"run": "drift-check-x", "drift_detected": True})
    assert _unchecked(store, ROOT) == []
    crops = [data for name in ("chelsea", "brick") for data in photo_crops(name, 5, np.random.default_rng(4), 32)]
    older = _sampled(writer, crops[:6])
    newer = _sampled(writer, crops[3:])  # three of the older batch's images sent again, within the same second
    waiting = _unchecked(store, ROOT)
    assert [b.name for b in waiting] == [older, newer] and [b.images for b in waiting] == [6, 7]
    listing = listing_path(waiting, "drift-check-y", tmp_path / "worktree")
    assert listing == store / "served-batches-drift-check-y.csv"  # beside the batches: no source.allowed_roots
    assert write_listing(waiting, listing) == 10
    assert pd.read_csv(listing)["uri"].str.fullmatch(rf"({older}|{newer})/[0-9a-f]{{16}}\.png").all()
    several = build_chain(tmp_path / "several", photos, batch=listing)
    current = pd.read_parquet(several["current"] / "manifest.parquet")
    assert len(current) == 10 and current["id"].is_unique and set(current["label_idx"]) == {-1}
    assert set(current["corruption"]) == {"batch:served-batches-drift-check-y"}
    ids, unscored = scorable_shift(chain["current"])  # evaluate: no accuracy on it, and it says why
    assert ids is None and unscored.startswith("18 of its 18 image(s) have no label")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["folder", "s3"])
def test_promotion_during_a_stream_swaps_once_without_a_failed_request(store, photos, bundles, tmp_path, request,
                                                                       monkeypatch):
    """The registry and the sample store a folder, or on a real S3 server: the champion moves mid-stream, and the
    batch the service flushes as it stops holds every image it answered (each once)."""
    if store == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        for bucket in ("models", "samples"):
            make_client(endpoint).create_bucket(Bucket=bucket)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # for this process and the server's
        location, samples = "s3://models/registry", "s3://samples/serve"
    else:
        location, samples = str(tmp_path / "registry"), str(tmp_path / "samples")
    registry = open_registry(location, ROOT)
    first, second = "20261206-100000-one", "20261206-110000-two"  # run names, as promote registers them
    registry.register(first, bundles["v1"], {"decision": "test"})
    registry.register(second, bundles["v2"], {"decision": "test"})
    registry.set_champion(first, {}, registry.champion_and_token()[1])
    images = sorted(photos.rglob("*.png"))
    answers: dict[int, list[tuple[int, str, str]]] = {client: [] for client in range(3)}  # per client, in order
    stop = threading.Event()

    def stream(url: str, client_id: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                image = images[(len(answers[client_id]) * 3 + client_id) % len(images)]
                answer = client.post("/predict", files=_files([image]))
                answers[client_id].append((answer.status_code, answer.headers.get("X-Model-Version", ""),
                                           answer.json().get("model_version", "")))

    args = ["--runtime", "eager", "--set", f"promote.registry={location}", "--set", "serve.follow_s=0.2",
            "--set", "serve.sample_rate=1", "--set", f"serve.sample_store={samples}"]
    with _server(*args, log=tmp_path / "serve.log") as url:
        streams = [threading.Thread(target=stream, args=(url, client)) for client in answers]
        for thread in streams:
            thread.start()
        time.sleep(2)
        registry.set_champion(second, {}, registry.champion_and_token()[1])
        deadline = time.monotonic() + 60
        while not all(seen and seen[-1][1] == second for seen in answers.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        for thread in streams:
            thread.join()
        ready = httpx.get(f"{url}/ready").json()
    for seen in answers.values():
        assert seen and all(status == 200 for status, _, _ in seen), {status for status, _, _ in seen}
        assert all(header == body for _, header, body in seen)
        versions = [version for _, version, _ in seen]
        switches = sum(a != b for a, b in zip(versions, versions[1:]))
        assert versions[0] == first and versions[-1] == second and switches == 1, versions
    assert ready["model_version"] == second and ready["ready"]
    answered = {images[(j * 3 + client) % len(images)] for client, seen in answers.items() for j in range(len(seen))}
    [batch] = _unchecked(samples, ROOT)  # written as the service stopped
    assert batch.images == len(answered)


@pytest.mark.slow
@pytest.mark.parametrize("changed", ["model.onnx", "model.pt"])
def test_serve_refuses_a_bundle_whose_file_differs_from_its_digest(changed, bundles, tmp_path, capsys):
    """A file changed after export: ONNX (the default runtime) and eager (which runs model.pt) both stop."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["v1"], bundle)
    with open(bundle / changed, "r+b") as fh:  # one byte flipped in the middle of the file
        fh.seek(fh.seek(0, 2) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    runtime = "onnx" if changed == "model.onnx" else "eager"
    assert main(["serve", "--model", str(bundle), "--runtime", runtime]) == 2
    assert "sha256" in capsys.readouterr().err


def test_serve_refuses_the_network_without_credentials(monkeypatch, capsys):
    monkeypatch.delenv("TLOPS_SERVE_AUTH", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "TLOPS_SERVE_AUTH" in capsys.readouterr().err


def test_serve_stops_at_once_when_its_sample_store_cannot_be_written(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    store = tmp_path / "a-file" / "samples"
    assert main(["serve", "--set", "serve.sample_rate=0.1", "--set", f"serve.sample_store={store}"]) == 2
    assert f"serve.sample_store {store}: cannot write" in capsys.readouterr().err


def test_a_served_batch_is_written_whole_and_never_holds_a_refused_image(tmp_path):
    writer = SampleWriter(str(tmp_path / "store"), tmp_path, rate=0.5, batch_images=3, batch_s=3600, seed=1)
    kept = [writer.offer(bytes([i]) * 10, "PNG", {"predicted": "a", "confidence": 1.0, "model_version": "v"})
            for i in range(40)]
    assert 10 < sum(kept) < 30  # about half
    assert writer.ready()
    first = writer.flush()
    assert writer.flush() is None and not writer.ready()  # nothing left open
    [batch] = _unchecked("store", tmp_path)
    assert batch.name == first and batch.images == sum(kept)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "store").iterdir())


def test_a_check_reads_the_newest_batches_up_to_its_cap_and_the_older_ones_are_superseded(tmp_path, caplog):
    writer = SampleWriter("store", tmp_path, rate=1.0, batch_images=100, batch_s=3600, seed=0)
    names = [_sampled(writer, [bytes([i, j]) * 10 for j in range(3)]) for i in range(3)]  # one second: 3 names
    assert len(set(names)) == 3 and names == sorted(names)
    read, superseded = unchecked_batches("store", tmp_path, max_images=7)
    assert [b.name for b in read] == names[1:] and [b.name for b in superseded] == names[:1]
    read, superseded = unchecked_batches("store", tmp_path, max_images=1)  # the newest is read whole, whatever the cap
    assert [b.name for b in read] == names[2:] and [b.name for b in superseded] == names[:2]
    mark_checked("store", tmp_path, names[2], {"run": "r"})
    assert [b.name for b in unchecked_batches("store", tmp_path, max_images=7)[0]] == names[:2]
    assert (tmp_path / "store" / names[2] / CHECKED).is_file()
    # the look stops after a run of checked batches: an unread one behind them was there when they were checked
    for _ in range(_CHECKED_RUN):
        mark_checked("store", tmp_path, _sampled(writer, [b"x" * 10]), {"run": "r"})
    assert unchecked_batches("store", tmp_path, max_images=7) == ([], [])
    newest = _sampled(writer, [b"y" * 10])  # an unread batch starts the count again, but the run before it is whole
    assert [b.name for b in unchecked_batches("store", tmp_path, max_images=7)[0]] == [newest]
    (tmp_path / "store" / newest).rename(tmp_path / "store" / "29990101T000000Z-host-1-0001")
    with caplog.at_level("WARNING"):
        unchecked_batches("store", tmp_path, max_images=7)
    assert "ahead of this machine's clock" in caplog.text


def test_a_listing_of_s3_batches_is_read_as_one_source(s3_endpoint, tmp_path, monkeypatch):
    make_client(s3_endpoint).create_bucket(Bucket="listed")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    writer = SampleWriter("s3://listed/samples", tmp_path, rate=1.0, batch_images=100, batch_s=3600, seed=0)
    images = [bad.good_png(seed) for seed in range(5)]
    first = _sampled(writer, images[:3])
    second = _sampled(writer, images[2:])
    waiting = unchecked_batches("s3://listed/samples", tmp_path, max_images=100)[0]
    assert [b.name for b in waiting] == [first, second]
    listing = listing_path(waiting, "r", tmp_path)  # S3: in the check's worktree, the images by URI
    assert listing == tmp_path / "served-batches.csv" and write_listing(waiting, listing) == 5
    assert pd.read_csv(listing)["uri"].str.startswith("s3://listed/samples/").all()
    source = open_source(str(listing), validate_params({}).source, unlabelled=True)
    assert sorted(record.data for record in source.records()) == sorted(images)


def test_ready_needs_every_worker_live_fresh_and_ready(tmp_path):
    other = subprocess.Popen(["sleep", "60"])  # a live process standing for a second worker
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        own = {"ready": True, "model_version": "v1"}
        publish(tmp_path, own)
        (tmp_path / f"{other.pid}.json").write_text(json.dumps({"ready": False, "problem": "loading"}))
        assert fleet_status(tmp_path, 2, own) == {**own, "ready": False, "workers": 2, "workers_ready": 1}
        (tmp_path / f"{other.pid}.json").write_text(json.dumps({"ready": True}))
        assert fleet_status(tmp_path, 2, own)["ready"]
        old = time.time() - STALE_S - 1  # a worker that stopped publishing (hung): not counted
        os.utime(tmp_path / f"{other.pid}.json", (old, old))
        assert not fleet_status(tmp_path, 2, own)["ready"]
        (tmp_path / f"{other.pid}.json").unlink()
        (tmp_path / f"{gone.pid}.json").write_text(json.dumps({"ready": True}))  # a dead worker's last word
        assert fleet_status(tmp_path, 2, own)["workers_ready"] == 1
        assert not fleet_status(tmp_path, 1, {"ready": False, "problem": "no champion"})["ready"]  # its own first
    finally:
        other.kill()
        other.wait()


def test_the_batcher_runs_whole_jobs_of_one_model_together_and_refuses_beyond_its_queue():
    """Jobs that wait while the model computes form the next batch, never mixing two models nor splitting a job,
    each getting its own rows back; past ``max_queue`` waiting jobs, submitting raises QueueFull (a 503)."""
    calls: list[tuple[str, int]] = []
    release = threading.Event()

    def served(name: str) -> ServedModel:
        def forward(inputs: torch.Tensor) -> np.ndarray:
            calls.append((name, len(inputs)))
            release.wait(10)  # the first batch holds the model thread while the others queue
            return torch.stack([inputs[:, 0, 0, 0], torch.zeros(len(inputs))], 1).numpy()

        return ServedModel(name, "0" * 64, "eager", ["a", "b"], Preprocessing(8, (0, 0, 0), (1, 1, 1)), forward)

    def job(value: float, n: int) -> torch.Tensor:
        return torch.full((n, 3, 2, 2), value)

    async def scenario() -> tuple[list[np.ndarray], bool]:
        batcher = Batcher(max_batch=4, max_wait_s=0.02, max_queue=3, metrics=ServeMetrics())
        loop_task = asyncio.create_task(batcher.run())
        one, two = served("one"), served("two")
        first = batcher.submit(one, job(0.0, 1))
        await asyncio.sleep(0.2)  # the first batch is computing (held)
        waiting = [batcher.submit(one, job(1.0, 2)), batcher.submit(two, job(2.0, 1)), batcher.submit(one, job(3.0, 3))]
        try:
            batcher.submit(one, job(4.0, 1))
            refused = False
        except QueueFull:
            refused = True
        release.set()
        answers = [await future for future in (first, *waiting)]
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        batcher.close()
        return answers, refused

    answers, refused = asyncio.run(scenario())
    assert refused
    assert calls == [("one", 1), ("one", 2), ("two", 1), ("one", 3)]
    for value, probs in zip((0.0, 1.0, 2.0, 3.0), answers):
        assert probs[:, 0] == pytest.approx(np.full(len(probs), 1 / (1 + np.exp(-value))))
