"""Ingest throughput and memory (local folder, local S3 server) and DVC push+pull: shards vs one file each.

    python -m bench.bench_ingest [--images 10000] [--small 2500]

1. Makes ``--images`` small synthetic PNGs (10 classes) in an ImageFolder tree.
2. Ingests them from the folder at two sizes (``--small`` and ``--images``) and from a local S3 server
   (moto), each in a fresh process, reporting images/s and peak RSS. Reference in the same run: a plain
   read of every file; memory flatness is the ratio of peak RSS at the large and the small count.
3. Times `dvc add` and `dvc push` + `dvc pull` (local remote, cache and data wiped between) for the
   ingested shards versus the same images as one file each, and reports the ratio.
Writes bench/results/ingest.json and bench/results/ingest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.report import RESULTS, BenchReport

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def make_images(root: Path, count: int) -> None:
    """``count`` distinct 16x16 RGB PNGs, ``root/<class>/<i>.png``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / f"c{i % CLASSES}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


def child_ingest(source: str, out: Path, endpoint: str | None) -> None:
    """Run the ingest stage in this (fresh) process and print seconds, images and peak RSS as JSON."""
    from pipeline.config import Params, apply_overrides, parse_overrides
    from pipeline.stages.ingest import Args, run

    overrides = [f"source.location={source}", "source.read_workers=8"]
    if endpoint:
        overrides.append(f"source.s3_endpoint_url={endpoint}")
    params = Params.model_validate(apply_overrides({}, parse_overrides(overrides)))  # defaults, not params.yaml
    started = time.perf_counter()
    summary = run(params, Args(dataset=out / "dataset", metrics=out / "metrics.json", report_dir=out / "report"))
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "images": summary["images"], "peak_rss_mb": peak_mb}))


def ingest_in_child(source: str, out: Path, endpoint: str | None = None) -> dict:
    """Ingest in a fresh process (its peak RSS is its own) and return its figures."""
    cmd = [sys.executable, "-m", "bench.bench_ingest", "--child", source, str(out), endpoint or ""]
    env = {**os.environ, "TLOPS_NO_PROGRESS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ingest of {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_all(root: Path) -> tuple[float, int]:
    """Reference: seconds to read every file's bytes once (sorted walk, one thread)."""
    started = time.perf_counter()
    count = sum(1 for p in sorted(root.rglob("*.png")) if p.read_bytes())
    return time.perf_counter() - started, count


def subset(src: Path, dest: Path, count: int) -> Path:
    """Hard-link the first ``count`` images of ``src`` into ``dest`` (same layout)."""
    for path in sorted(src.rglob("*.png"))[:count]:
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    return dest


def upload(endpoint: str, root: Path, bucket: str) -> float:
    """Put every image under ``root`` into ``bucket/imgs/`` (8 threads); returns seconds."""
    from tests.support.s3server import make_client

    client = make_client(endpoint)
    client.create_bucket(Bucket=bucket)
    started = time.perf_counter()
    paths = sorted(root.rglob("*.png"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.put_object(Bucket=bucket, Key=f"imgs/{p.relative_to(root)}",
                                                  Body=p.read_bytes()), paths))
    return time.perf_counter() - started


def dvc_round_trip(data: Path, work: Path) -> dict:
    """`dvc add` then push + pull (cache and data wiped in between) of ``data`` in a fresh repo."""
    repo = work / "repo"
    repo.mkdir(parents=True)
    shutil.copytree(data, repo / "payload")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    dvc("remote", "add", "-d", "store", str(work / "remote"))
    add = dvc("add", "payload")
    push = dvc("push")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "payload")
    pull = dvc("pull")
    files = sum(1 for p in (repo / "payload").rglob("*") if p.is_file())
    return {"files": files, "add_s": round(add, 2), "push_s": round(push, 2), "pull_s": round(pull, 2),
            "push_pull_s": round(push + pull, 2)}


def plot(rows: list[dict], target: Path) -> None:
    """Throughput, peak memory and DVC times side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ingest = [r for r in rows if r.get("kind") == "ingest"]
    dvc = [r for r in rows if r.get("kind") == "dvc"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [f"{r['source']}\n{r['images']}" for r in ingest]
    axes[0].bar(names, [r["images_per_s"] for r in ingest])
    axes[0].set(title="ingest throughput", ylabel="images/s")
    axes[1].bar(names, [r["peak_rss_mb"] for r in ingest], color="tab:orange")
    axes[1].set(title="peak RSS of the ingest process", ylabel="MiB")
    axes[2].bar([f"{r['layout']}\n({r['files']} files)" for r in dvc], [r["push_pull_s"] for r in dvc],
                color="tab:green")
    axes[2].set(title="dvc push + pull (local remote)", ylabel="seconds")
    fig.tight_layout()
    fig.savefig(target, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ingest")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_500)
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "OUT", "ENDPOINT"), help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        child_ingest(ns.child[0], Path(ns.child[1]), ns.child[2] or None)
        return 0
    report = BenchReport("ingest")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        make_images(work / "imgs", ns.images)
        report.emit(step="make_images", images=ns.images, seconds=round(time.perf_counter() - started, 2))
        read_s, count = read_all(work / "imgs")
        report.emit(kind="reference", what="plain read of every file", images=count,
                    images_per_s=round(count / read_s))
        runs = {}
        for label, source, endpoint in _ingest_plan(work, ns, report):
            figures = ingest_in_child(source, work / f"out-{label}", endpoint)
            runs[label] = figures
            report.emit(kind="ingest", source=label.split("-")[0], images=figures["images"],
                        seconds=round(figures["seconds"], 2),
                        images_per_s=round(figures["images"] / figures["seconds"]),
                        peak_rss_mb=round(figures["peak_rss_mb"], 1),
                        vs_plain_read=round(figures["images"] / figures["seconds"] / (count / read_s), 3))
        report.emit(kind="ratio", what="peak RSS folder large/small (1.0 = flat)", images=(ns.images, ns.small),
                    ratio=round(runs["folder-large"]["peak_rss_mb"] / runs["folder-small"]["peak_rss_mb"], 3))
        shards = dvc_round_trip(work / "out-folder-large" / "dataset", work / "dvc-shards")
        files = dvc_round_trip(work / "imgs", work / "dvc-files")
        report.emit(kind="dvc", layout="shards", **shards)
        report.emit(kind="dvc", layout="one file per image", **files)
        report.emit(kind="ratio", what="dvc push+pull: one file per image / shards",
                    ratio=round(files["push_pull_s"] / shards["push_pull_s"], 1),
                    add_ratio=round(files["add_s"] / shards["add_s"], 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(report.rows, RESULTS / "ingest.png")
    report.save()
    return 0


def _ingest_plan(work: Path, ns: argparse.Namespace, report: BenchReport):
    """Yield (label, source, endpoint) for each ingest run; the S3 one inside a running moto server."""
    yield "folder-small", str(subset(work / "imgs", work / "imgs-small", ns.small)), None
    yield "folder-large", str(work / "imgs"), None
    from tests.support.s3server import S3_ENV, moto_server

    os.environ.update(S3_ENV)
    with moto_server() as endpoint:
        report.emit(step="upload_to_s3", images=ns.images, seconds=round(upload(endpoint, work / "imgs", "bench"), 2))
        yield "s3-large", "s3://bench/imgs", endpoint


if __name__ == "__main__":
    sys.exit(main())
