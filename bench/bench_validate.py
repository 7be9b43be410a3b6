"""Validation gate: profile throughput per core, peak memory at 10k vs 50k images, GX cost over the profile.

Each measured run is a fresh child process on a synthetic dataset of distinct 32x32 RGB PNGs written
through the real shard writer, so peak RSS (the child and its worker processes) belongs to that run
alone. Reference for throughput: the same profile in one process (workers=1). Reference for the GX
cost: the profile time of the same run.

    python -m bench.bench_validate                  # 10k (1 worker), 10k and 50k (all cores)
    python -m bench.bench_validate --sizes 2000     # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from PIL import Image

from bench.report import BenchReport
from pipeline.common.logs import progress
from pipeline.validation.profile import resolve_workers

# Heavy imports (torch through the shard reader, GX) stay inside functions: the profile's worker
# processes are spawned and re-import this module, and should not pay for them.

CLASSES = [str(i) for i in range(10)]
SPLITS = np.array(["train"] * 7 + ["val"] * 3 + ["test"] * 3)  # split chosen from the image index


def make_dataset(root: Path, count: int, seed: int = 0) -> Path:
    """Write ``count`` distinct random 32x32 PNGs as a dataset directory (10 classes, 3 splits)."""
    from pipeline.data.shards import ShardWriter, write_classes, write_manifest

    rng, rows = np.random.default_rng(seed), []
    with ShardWriter(root / "shards", 32 << 20) as writer:
        for index in progress(range(count), desc=f"make {count} images", unit="img"):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG", compress_level=1)
            data, label = buffer.getvalue(), CLASSES[index % len(CLASSES)]
            shard, offset, length = writer.add(f"{index:07d}.png", data)
            rows.append({"id": f"{index:07d}", "source_path": f"{label}/{index:07d}.png", "label": label,
                         "label_idx": index % len(CLASSES), "split": SPLITS[index // 10 % len(SPLITS)],
                         "sha256": hashlib.sha256(data).hexdigest(), "width": 32, "height": 32, "mode": "RGB",
                         "bytes": len(data), "shard": shard, "offset": offset, "length": length, "in_budget": True})
    write_manifest(root, pd.DataFrame(rows))
    write_classes(root, CLASSES)
    return root


class PeakMemory:
    """Sample the RSS of this process plus all its children (the profile workers) in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(dataset: Path, workers: int, out_dir: Path) -> dict:
    """Child process: profile the dataset, then run the checks and the GX suite; time and peak memory."""
    from pipeline.config import ValidateParams
    from pipeline.validation.dataset import profile_dataset
    from pipeline.validation.checks import class_table, with_count_columns
    from pipeline.validation.suite import run_suite

    cfg = ValidateParams(workers=workers, min_rows=1)
    with PeakMemory() as profile_memory:
        started = time.perf_counter()
        profile = profile_dataset(dataset, cfg)
        profiled = time.perf_counter()
    with PeakMemory() as gx_memory:
        checks = run_suite(with_count_columns(profile, class_table(profile, CLASSES)), cfg, CLASSES, out_dir)
        finished = time.perf_counter()
    return {"profile_s": profiled - started, "gx_s": finished - profiled,
            "failed_checks": [c.name for c in checks if not c.passed],
            "peak_mb_profile": profile_memory.peak_mb, "peak_mb_gx": gx_memory.peak_mb}


def run_child(dataset: Path, workers: int, tmp: Path) -> dict:
    """Run :func:`measure` in a fresh interpreter and return its figures."""
    out = subprocess.run([sys.executable, "-m", "bench.bench_validate", "--child", str(dataset),
                          "--workers", str(workers), "--out", str(tmp / f"gx-{workers}-{dataset.name}")],
                         check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, "TLOPS_NO_PROGRESS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_validate")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(measure(ns.child, ns.workers, ns.out)))
        return 0
    cores = resolve_workers(0)
    report = BenchReport("validate")
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        tmp = Path(tmp)
        runs = [(ns.sizes[0], 1)] + [(size, cores) for size in ns.sizes]
        for size, workers in runs:
            dataset = tmp / f"ds{size}"
            if not dataset.exists():
                make_dataset(dataset, size)
            fig = run_child(dataset, workers, tmp)
            per_core = size / fig["profile_s"] / workers
            report.emit(images=size, workers=workers, profile_s=round(fig["profile_s"], 2),
                        images_per_s=round(size / fig["profile_s"], 1), images_per_s_per_core=round(per_core, 1),
                        gx_s=round(fig["gx_s"], 2), gx_over_profile=round(fig["gx_s"] / fig["profile_s"], 3),
                        peak_mb_profile=round(fig["peak_mb_profile"], 1), peak_mb_gx=round(fig["peak_mb_gx"], 1),
                        failed_checks=fig["failed_checks"])
        _emit_ratios(report, runs)
    report.save()
    return 0


def _emit_ratios(report: BenchReport, runs: list[tuple[int, int]]) -> None:
    """Speed-up of all cores over one, and peak memory of the largest run over the smallest."""
    rows = {(r["images"], r["workers"]): r for r in report.rows if "images" in r}
    small, large = runs[1], runs[-1]
    one, many = rows[runs[0]], rows[small]
    report.emit(summary="parallel", speedup_all_cores_vs_one=round(many["images_per_s"] / one["images_per_s"], 2),
                efficiency_per_core=round(many["images_per_s_per_core"] / one["images_per_s_per_core"], 2))
    if large != small:
        grown = rows[large]["peak_mb_profile"] - rows[small]["peak_mb_profile"]
        report.emit(summary="memory", images_ratio=large[0] / small[0],
                    peak_profile_ratio=round(rows[large]["peak_mb_profile"] / rows[small]["peak_mb_profile"], 3),
                    peak_gx_ratio=round(rows[large]["peak_mb_gx"] / rows[small]["peak_mb_gx"], 3),
                    profile_mb_per_10k_more_images=round(grown / ((large[0] - small[0]) / 10_000), 1))

if __name__ == "__main__":
    sys.exit(main())
