"""What a backbone costs: parameters, FLOPs at an input size, measured latency on a device."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "measure_gflops", "Latency", "measure_latency"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a model."""
    return sum(p.numel() for p in model.parameters())


def measure_gflops(model: nn.Module, image_size: int, channels: int = 3) -> float:
    """GFLOPs of one forward pass on one image (a multiply-add counts 2), counted by FlopCounterMode.

    Args:
        model: the model (a meta-device model works and costs nothing).
        image_size: side of the square input.
        channels: input channels.
    Returns:
        Billions of floating-point operations.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, channels, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


@dataclass(frozen=True)
class Latency:
    """Timed batch-of-one passes: their median and spread, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def spread(self) -> dict[str, float]:
        """The quartiles and extremes, rounded for a report."""
        return {"q1": round(self.q1_ms, 3), "q3": round(self.q3_ms, 3), "min": round(self.min_ms, 3),
                "max": round(self.max_ms, 3), "runs": self.runs}


def measure_latency(model: nn.Module, image_size: int, device: torch.device, runs: int = 10,
                    warmup: int = 3, warmup_seconds: float = 0.25) -> Latency:
    """Batch-of-one forward passes on ``device``, timed after a warm-up: median and spread in ms.

    The first passes of a network pay one-off costs (allocator growth, oneDNN/cuDNN kernel choice,
    thread-pool start-up) that made a single model's figure swing 50x between runs; they are run
    untimed until both ``warmup`` passes and ``warmup_seconds`` have gone by. The spread (quartiles,
    extremes) shows how far one figure can be trusted on a noisy machine.

    Args:
        model: the model (moved to ``device`` by the caller).
        image_size: side of the square input.
        device: where it runs; CUDA work is synchronised before the clock stops.
        runs: timed passes.
        warmup: untimed passes first, at least.
        warmup_seconds: untimed time first, at least.
    Returns:
        The median and spread of milliseconds per image.
    """
    x = torch.zeros(1, 3, image_size, image_size, device=device)

    def timed() -> float:
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    model.eval()
    with torch.no_grad():
        began, passes = time.perf_counter(), 0
        while passes < warmup or time.perf_counter() - began < warmup_seconds:
            timed()
            passes += 1
        times = np.array([timed() for _ in range(runs)])
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return Latency(float(median), float(q1), float(q3), float(times.min()), float(times.max()), runs)
