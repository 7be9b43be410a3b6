"""Model bundles to serve: a pretrained network with a seeded head, saved and exported as a run's bundle is.

The head is random (seeded), not trained: what serving tests check is that HTTP answers equal ``tlops predict``'s
and which version answered, not how good the model is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data.images import decode_rgb
from pipeline.models.export import export_bundle
from pipeline.models.loaded import LoadedModel

__all__ = ["write_bundle"]


def write_bundle(out: Path, classes: list[str], images: list[Path], seed: int = 0, size: int = 32,
                 name: str = "efficientnet_lite0") -> Path:
    """A checked serving bundle in ``out`` (model.pt, card.json, model.onnx, model.torchscript.pt, export.json)
    whose exports were checked on ``images`` (2 or more image files)."""
    model = LoadedModel.pretrained(name, len(classes), size, seed=seed, classes=classes)
    model.network.eval()
    transform = model.preprocessing.transform()
    batch = torch.stack([transform(decode_rgb(path.read_bytes())) for path in images])
    model_dir = out.with_name(out.name + ".model")
    model.save(model_dir, {"source": "tests/support/served.py", "seed": seed})
    export_bundle(model, model_dir, batch, out, ("onnx", "torchscript"), atol=1e-3)
    return out
