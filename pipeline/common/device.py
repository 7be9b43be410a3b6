"""Device choice: cuda > mps > cpu, overridable from params (``common.device``)."""

from __future__ import annotations

import torch

__all__ = ["select_device", "memory_format"]


def select_device(requested: str = "auto") -> torch.device:
    """Return the device to run on.

    Args:
        requested: ``auto`` (best available), or ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    Returns:
        The torch device.
    Raises:
        RuntimeError: when a specific accelerator is asked for and is not available.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"common.device = {requested!r}: CUDA is not available on this machine "
                           "(use 'auto' or 'cpu')")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("common.device = 'mps': MPS is not available on this machine (use 'auto' or 'cpu')")
    return torch.device(requested)


def memory_format(device: torch.device, channels_last: bool = True) -> torch.memory_format:
    """The layout convolutions run fastest in on ``device``: channels_last on CUDA and on the CPU (oneDNN;
    measured 1.8x faster training and 1.7x faster inference of EfficientNet-Lite0 on the 2-core CPU),
    the default elsewhere (MPS)."""
    return torch.channels_last if channels_last and device.type in ("cpu", "cuda") else torch.contiguous_format
