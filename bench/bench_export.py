"""What the ONNX export costs: the export stage's way against tracing the network with its in-place activations.

Run: ``python -m bench.bench_export [--arch efficientnet_lite0 mobilenet_v3_small resnet18] [--image-size 32]
[--repeats 2]``.
For each catalog architecture (random weights, a 10-class head: the export's cost does not depend on the values),
the CPU seconds of :func:`pipeline.models.export.export_formats` (what ``tlops export`` runs: in-place activations
switched off while the exporter traces) against the same ``torch.onnx.export`` call on the network as it is (the
reference: how the stage exported before), the minimum over ``--repeats`` of each, after one warm-up export that
loads the exporter. Both files are run in ONNX Runtime on the same batch first, so a fast but different export
cannot win: the largest logit difference between them is printed with the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.report import BenchReport
from pipeline.common.logs import setup_logging
from pipeline.models.build import build_network
from pipeline.models.catalog import get_spec
from pipeline.models.export import FORMATS, export_formats, onnx_session, trace_to_onnx


def _in_place_export(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The reference: the stage's exporter call on the network with its in-place activations as they are, under
    the same no-grad and warning settings as :func:`export_formats`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace_to_onnx(network, example, path)


def _cpu_seconds(repeats: int, export, *args) -> float:
    """The least CPU time of ``repeats`` calls of ``export(*args)`` (this process only: the exporter runs in it)."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        export(*args)
        times.append(time.process_time() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["efficientnet_lite0", "mobilenet_v3_small", "resnet18"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    setup_logging("WARNING")
    report = BenchReport("bench_export")
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(4, 3, ns.image_size, ns.image_size, generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        out, reference_file = Path(tmp), Path(tmp) / "in-place.onnx"
        for index, arch in enumerate(ns.arch):
            network = build_network(get_spec(arch), 10, pretrained=False)[0].eval()
            if index == 0:  # the first export loads the exporter's modules: not part of either figure
                _in_place_export(network, example, reference_file)
            stage = _cpu_seconds(ns.repeats, export_formats, network, example, out, ("onnx",))
            reference = _cpu_seconds(ns.repeats, _in_place_export, network, example, reference_file)
            images = example[:3].numpy()
            logits = [onnx_session(path).run(["logits"], {"images": images})[0]
                      for path in (out / FORMATS["onnx"], reference_file)]
            report.emit(model=arch, image_size=ns.image_size, threads=torch.get_num_threads(),
                        export_cpu_s=round(stage, 2), in_place_cpu_s=round(reference, 2),
                        export_vs_in_place=round(stage / reference, 2),
                        max_abs_logit_diff=float(np.abs(logits[0] - logits[1]).max()))
    print(f"results: {report.save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
