"""`tlops predict` end to end on a folder of large photos: seconds and peak memory against decoding them alone.

    python -m bench.bench_predict_batch [--images 300] [--side 1600] [--image-size 64]

Writes ``--images`` JPEG crops of scikit-learn's two sample photographs upscaled to ``--side`` x 3/4 of it (what
a camera folder holds) and an EfficientNet-Lite0 model at ``--image-size`` (its pretrained weights, a 2-class
head); then, in one process: the reference, each image read and decoded to upright RGB once
(pipeline.data.images.decode_rgb) and dropped, and ``predict_batch`` on the same folder (read, held to the gate's
per-image rules, classified, written). Prints seconds, images/s and the ratio to the reference, and the
process's peak resident memory after each (the reference first: it holds one photo at a time).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

from bench.report import BenchReport
from pipeline.common.logs import setup_logging
from pipeline.config import validate_params
from pipeline.data.images import decode_rgb
from pipeline.models import LoadedModel
from pipeline.prediction.batch import predict_batch, read_batch
from pipeline.prediction.models import ModelRef


def write_photos(folder: Path, count: int, side: int) -> int:
    """``count`` JPEG crops (quality 90) of the sample photographs at ``side`` x 3/4 side; returns their bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    for i in range(count):
        x, y = int(rng.integers(0, 200)), int(rng.integers(0, 150))
        crop = photos[i % len(photos)].crop((x, y, x + 400, y + 300)).resize((side, side * 3 // 4))
        crop.save(folder / f"{i:04d}.jpg", quality=90)
    return sum(p.stat().st_size for p in folder.iterdir())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--side", type=int, default=1600)
    parser.add_argument("--image-size", type=int, default=64)
    ns = parser.parse_args()
    setup_logging("WARNING")
    report = BenchReport("predict_batch")
    params = validate_params({})
    with tempfile.TemporaryDirectory(prefix="tlops-bench-predict-") as tmp:
        folder, model_dir = Path(tmp) / "photos", Path(tmp) / "model"
        size = write_photos(folder, ns.images, ns.side)
        LoadedModel.pretrained("efficientnet_lite0", 2, ns.image_size, classes=["china", "flower"]).save(model_dir, {})
        started = time.perf_counter()
        for image in read_batch(str(folder), params):
            decode_rgb(image.data)
        decode_s = time.perf_counter() - started
        report.emit(step="decode only (reference)", images=ns.images, megabytes=round(size / 2**20, 1),
                    seconds=round(decode_s, 2), peak_rss_mb=round(peak_rss_mb()))
        started = time.perf_counter()
        summary = predict_batch(read_batch(str(folder), params), ModelRef(model_dir, "bench"), params,
                                Path(tmp) / "out")
        predict_s = time.perf_counter() - started
        report.emit(step="tlops predict", images=summary["images"], predicted=summary["predicted"],
                    seconds=round(predict_s, 2), images_per_s=round(ns.images / predict_s, 1),
                    vs_decode_only=round(predict_s / decode_s, 2), peak_rss_mb=round(peak_rss_mb()))
    print(f"results: {report.save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
