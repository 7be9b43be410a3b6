"""The one inference loop: a network over a loader, in eval mode, without gradients, with progress.

``run_batches`` is shared by the loaded model (logits, embeddings, probabilities), the training
engine's validation pass and its feature cache, so there is one place that decides eval mode,
device transfer, autocast, timing and progress.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from pipeline.common.device import memory_format
from pipeline.common.logs import progress

__all__ = ["BatchOutputs", "run_batches", "split_forward", "probabilities"]

# maps an input batch (on the device) to named output tensors, e.g. {"logits": ..., "embeddings": ...}
Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class BatchOutputs:
    """Named outputs of every item (CPU, float32, in loader order), their labels and the forward time."""

    outputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    seconds: float  # forward passes only (CUDA synchronised), not decoding

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images_per_s(self) -> float:
        return len(self) / max(self.seconds, 1e-9)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":  # CUDA runs asynchronously: wait for the kernels before reading the clock
        torch.cuda.synchronize(device)
    return time.perf_counter()


def split_forward(network: nn.Module, want: Iterable[str]) -> Forward:
    """A forward returning ``embeddings`` (pooled pre-logits) and/or ``logits`` of a timm-API network."""
    want = tuple(want)
    unknown = set(want) - {"embeddings", "logits"}
    if unknown:
        raise ValueError(f"unknown model outputs {sorted(unknown)}: ask for embeddings and/or logits")

    def forward(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = network.forward_head(network.forward_features(inputs), pre_logits=True)
        out = {"embeddings": pooled} if "embeddings" in want else {}
        if "logits" in want:
            out["logits"] = network.get_classifier()(pooled)
        return out

    return forward


@torch.no_grad()
def run_batches(module: nn.Module, forward: Forward, batches: Iterable, device: torch.device, *,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                desc: str = "inference", total: int | None = None, show_progress: bool = True) -> BatchOutputs:
    """Run ``forward`` over (inputs, labels) batches with ``module`` in eval mode.

    Args:
        module: the network ``forward`` uses (put in eval mode here).
        forward: input batch -> named output tensors.
        batches: yields (inputs, labels); a DataLoader or any iterable.
        device: where the module is.
        autocast: precision context factory for the forward passes.
        desc: progress label.
        total: number of batches, when ``batches`` has no length.
        show_progress: draw a progress bar (off for the short validation pass of every epoch).
    Returns:
        The outputs, concatenated.
    """
    module.eval()
    layout = memory_format(device)
    collected: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    seconds = 0.0
    items = progress(batches, desc, total=total, unit="batch") if show_progress else batches
    for inputs, targets in items:
        inputs = inputs.to(device, non_blocking=True)
        if inputs.dim() == 4:  # images: the layout the networks are kept in (pipeline.common.device)
            inputs = inputs.contiguous(memory_format=layout)
        began = _clock(device)
        with autocast():
            out = forward(inputs)
        seconds += _clock(device) - began
        for name, tensor in out.items():
            collected.setdefault(name, []).append(tensor.float().cpu())
        labels.append(torch.as_tensor(targets).long().cpu())
    if not labels:
        raise ValueError(f"{desc}: no images to run the model on")
    return BatchOutputs({name: torch.cat(parts) for name, parts in collected.items()}, torch.cat(labels), seconds)


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities [N, C] in float64, rows renormalised to sum to 1 (metrics check that they do)."""
    probs = logits.double().softmax(1).numpy()
    return probs / probs.sum(axis=1, keepdims=True)
