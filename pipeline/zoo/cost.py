"""What a backbone costs: parameters, FLOPs at an input size, measured latency on a device."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "measure_gflops", "measure_latency_ms"]


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


def measure_latency_ms(model: nn.Module, image_size: int, device: torch.device, runs: int = 10,
                       warmup: int = 2) -> float:
    """Median wall time of a batch-of-one forward pass on ``device``, in milliseconds.

    Args:
        model: the model (moved to ``device`` by the caller).
        image_size: side of the square input.
        device: where it runs; CUDA work is synchronised before the clock stops.
        runs: timed passes (the median is reported).
        warmup: untimed passes first (allocator, cudnn autotune).
    Returns:
        Milliseconds per image.
    """
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    times = []
    model.eval()
    with torch.no_grad():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
