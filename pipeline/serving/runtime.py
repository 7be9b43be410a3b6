"""The model a service answers with: a model directory loaded in one runtime, checked against its digests.

``onnx`` (the default) runs the bundle's ``model.onnx`` in ONNX Runtime, ``torchscript`` its traced file,
``eager`` the state dict in PyTorch. Whatever the runtime, a model is served only once the file it runs
matches the digest its cards record (``model.pt`` against card.json's; an export against export.json's, which
must name card.json's state dict, and an export whose check against PyTorch did not pass is refused), and a
forward pass on a blank batch gives one finite logit per class. Images are preprocessed as the model was
trained (the card's preprocessing), and the logits become probabilities as ``tlops predict`` makes them, so a
served answer is ``predict``'s within the export's tolerance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from pipeline.common.io import read_json
from pipeline.models.catalog import get_spec
from pipeline.models.export import EXPORT_CARD, load_torchscript, onnx_session
from pipeline.models.inference import probabilities
from pipeline.models.loaded import LoadedModel, read_card
from pipeline.models.preprocess import Preprocessing

__all__ = ["Runtime", "ServedModel", "load_served"]
Runtime = Literal["onnx", "torchscript", "eager"]


@dataclass(frozen=True)
class ServedModel:
    """One loaded, checked model: what it is called, what it holds, how to feed it and run it."""

    version: str  # the registry version (or the folder) it was loaded from: X-Model-Version
    sha256: str  # its state dict's digest (card.json's state_dict_sha256)
    runtime: Runtime
    classes: list[str]
    preprocessing: Preprocessing
    forward: Callable[[torch.Tensor], np.ndarray]  # preprocessed float32 [N, 3, S, S] -> logits [N, C]

    def probabilities(self, inputs: torch.Tensor) -> np.ndarray:
        """Class probabilities [N, C] (float64, rows summing to 1) of a preprocessed batch, as ``tlops predict``
        computes them from the logits."""
        return probabilities(torch.from_numpy(np.ascontiguousarray(self.forward(inputs), dtype=np.float32)))


def load_served(model_dir: str | os.PathLike, version: str, runtime: Runtime, threads: int) -> ServedModel:
    """Load ``model_dir`` in ``runtime`` with ``threads`` compute threads, after checking its digests.

    Raises:
        FileNotFoundError: a file the runtime needs is missing (an ONNX runtime on a folder without exports).
        ValueError: a digest that differs, an export whose check failed, or logits of the wrong shape.
    """
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    preprocessing = Preprocessing.from_card(card, get_spec(card["model"]))
    forward = _FORWARDS[runtime](model_dir, card, threads)
    model = ServedModel(version, card["state_dict_sha256"], runtime, list(card["classes"]), preprocessing, forward)
    blank = torch.zeros(2, 3, preprocessing.image_size, preprocessing.image_size)
    logits = model.forward(blank)
    if logits.shape != (2, len(model.classes)) or not np.isfinite(logits).all():
        raise ValueError(f"{model_dir}: {runtime} gives logits of shape {logits.shape} on a blank batch (expected "
                         f"(2, {len(model.classes)}) finite values)")
    return model


def _export_entry(model_dir: Path, card: dict[str, Any], name: str) -> None:
    """Refuse an export that is not this model's or whose check against PyTorch failed (the loaders check the
    file's own digest against export.json)."""
    path = model_dir / EXPORT_CARD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no serving exports in {model_dir} (a registry version has them; for a "
                                "model folder run `tlops export`, or serve with --runtime eager)")
    exports = read_json(path)
    if exports.get("state_dict_sha256") != card["state_dict_sha256"]:
        raise ValueError(f"{path}: made from another model (state_dict_sha256 differs from card.json's)")
    check = exports.get("formats", {}).get(name) or {}
    if not check.get("passed"):
        raise ValueError(f"{path}: the {name} export did not pass its check against PyTorch (or has none): "
                         f"{ {k: check.get(k) for k in ('max_abs_logit_diff', 'top1_agreement')} }")


def _onnx(model_dir: Path, card: dict[str, Any], threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    _export_entry(model_dir, card, "onnx")
    session = onnx_session(model_dir, threads)
    return lambda inputs: session.run(["logits"], {"images": inputs.contiguous().numpy()})[0]


def _torchscript(model_dir: Path, card: dict[str, Any], threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    _export_entry(model_dir, card, "torchscript")
    return _torch_forward(load_torchscript(model_dir), threads)


def _eager(model_dir: Path, card: dict[str, Any], threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    return _torch_forward(LoadedModel.load(model_dir, "cpu").network, threads)  # model.pt checked by its loader


def _torch_forward(module: torch.nn.Module, threads: int) -> Callable[[torch.Tensor], np.ndarray]:
    torch.set_num_threads(threads)

    def forward(inputs: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return module(inputs.contiguous()).numpy()

    return forward


_FORWARDS: dict[str, Callable[[Path, dict[str, Any], int], Callable[[torch.Tensor], np.ndarray]]] = {
    "onnx": _onnx, "torchscript": _torchscript, "eager": _eager}
