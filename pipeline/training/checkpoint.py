"""Per-epoch training checkpoints, written atomically, read back with ``weights_only=True``.

A checkpoint holds everything the next epoch depends on: model, optimizer, schedule and grad-scaler
states, where training stands (phase, next epoch), the history, the best weights so far and the
early-stopping counter. Random streams need no saving: every epoch reseeds from (seed, phase, epoch).
A fingerprint of the plan and settings guards against resuming a different run.

A stage resumes with ``--resume``, or when ``TLOPS_RESUME=1`` is in its environment
(pipeline.common.processes): the retrain flow sets it when it retries a stage that was killed, in the
same worktree, so the retry continues from the last whole epoch instead of starting over (dvc.yaml's
command, and so dvc.lock, stay the same).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.common.io import atomic_path
from pipeline.common.logs import get_logger

__all__ = ["CHECKPOINT", "fingerprint", "save_checkpoint", "load_checkpoint"]
log = get_logger(__name__)
CHECKPOINT = "last.pt"


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (plan, settings, seed, data sizes) identifying a run."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``ckpt_dir/last.pt`` atomically (a crash keeps the previous checkpoint).

    Args:
        ckpt_dir: the checkpoint directory.
        state: tensors, state dicts and plain values.
    Returns:
        The checkpoint path.
    """
    target = Path(ckpt_dir) / CHECKPOINT
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return target


def load_checkpoint(ckpt_dir: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """Read the last checkpoint, or None when there is none yet.

    Args:
        ckpt_dir: the checkpoint directory.
        expected_fingerprint: the current run's fingerprint.
    Returns:
        The saved state, or None.
    Raises:
        ValueError: the checkpoint belongs to a run with another plan or settings.
    """
    path = Path(ckpt_dir) / CHECKPOINT
    if not path.is_file():
        log.warning("--resume: no checkpoint at %s, starting from the beginning", path)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"{path}: checkpoint is from a different run (fingerprint {state.get('fingerprint')} "
                         f"!= {expected_fingerprint}: the plan, params or data changed); delete it or drop --resume")
    return state
