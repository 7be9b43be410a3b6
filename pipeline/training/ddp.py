"""Multi-process training: the same entry point under ``torchrun`` with DistributedDataParallel.

``torchrun --standalone --nproc_per_node N -m pipeline.cli finetune ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on the CPU). Without
those variables everything runs as one process and no process group is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "init_distributed", "wrap_ddp", "all_reduce_sum", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when launched by torchrun.

    Args:
        device: the device chosen for a single process (cuda picks ``cuda:LOCAL_RANK`` here).
    Returns:
        (this process's DistInfo, the device it should use).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Wrap the trained module in DDP when running multi-process (only trainable params sync)."""
    if not info.active:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all processes (identity for one process)."""
    if info.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
