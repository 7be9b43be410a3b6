"""Prediction throughput on the CPU: PyTorch eager vs its TorchScript and ONNX Runtime exports, in one run.

Run: ``python -m bench.bench_predict [--model models/serving | --arch efficientnet_lite0] [--image-size 224]
[--batch 32] [--repeats 10]``.
The model is a trained model folder when given (its own input size), else a catalog architecture with its
pretrained weights and a fresh 10-class head (throughput does not depend on the head's values). The three
runtimes take the same preprocessed batches (eager in the channels_last layout our inference uses on the
CPU) (random pixels: the cost of a forward pass does not depend on them), after two warm-up passes each;
each figure is the median of ``--repeats`` timed passes over the batches, at batch 1 (interactive) and
``--batch`` (bulk). The exports are checked against eager first (max |logit difference|), so a fast but
wrong runtime cannot win.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.report import BenchReport
from pipeline.common.device import memory_format
from pipeline.common.logs import setup_logging
from pipeline.models import LoadedModel
from pipeline.models.export import FORMATS, export_formats, exported_logits, load_torchscript, onnx_session

IMAGES = 128  # images per timed pass


def median_rate(forward: Callable[[torch.Tensor], object], batches: list[torch.Tensor], repeats: int) -> float:
    """Images per second: the median over ``repeats`` passes over ``batches``, after two warm-up passes."""
    for batch in batches[:2]:
        forward(batch)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            forward(batch)
        rates.append(sum(len(b) for b in batches) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a trained model folder (model.pt + card.json)")
    parser.add_argument("--arch", default="efficientnet_lite0", help="catalog model when --model is not given")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    ns = parser.parse_args()
    setup_logging("WARNING")
    model = (LoadedModel.load(ns.model) if ns.model else
             LoadedModel.pretrained(ns.arch, 10, ns.image_size, classes=[str(i) for i in range(10)]))
    size = model.preprocessing.image_size
    network = model.network.eval()
    report = BenchReport("bench_predict")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(IMAGES, 3, size, size, generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        export_seconds = export_formats(network, pixels[:4], Path(tmp))
        runners = {"onnx": onnx_session(Path(tmp) / FORMATS["onnx"]),
                   "torchscript": load_torchscript(Path(tmp) / FORMATS["torchscript"])}
        with torch.no_grad():
            reference = network(pixels[:16]).numpy()
        for name, runner in runners.items():
            diff = float(np.abs(exported_logits(name, runner, pixels[:16]) - reference).max())
            report.emit(check=name, max_abs_logit_diff=diff, export_seconds=export_seconds[name])
        layout = memory_format(torch.device("cpu"))  # what pipeline/models/inference.py feeds the network
        forwards = {
            "eager": lambda b: network(b.contiguous(memory_format=layout)),
            "torchscript": lambda b: runners["torchscript"](b),
            "onnxruntime": lambda b: runners["onnx"].run(["logits"], {"images": b.numpy()}),
        }
        for batch_size in (1, ns.batch):
            batches = list(pixels.split(batch_size))
            rates = {}
            with torch.no_grad():
                for name, forward in forwards.items():
                    rates[name] = median_rate(forward, batches, ns.repeats)
            report.emit(model=model.name, image_size=size, batch=batch_size, threads=torch.get_num_threads(),
                        **{f"{name}_images_per_s": round(rate, 1) for name, rate in rates.items()},
                        onnxruntime_vs_eager=round(rates["onnxruntime"] / rates["eager"], 2),
                        torchscript_vs_eager=round(rates["torchscript"] / rates["eager"], 2))
    print(f"results: {report.save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
