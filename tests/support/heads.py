"""Real classifiers in seconds for promotion tests: a pretrained EfficientNet-Lite0 whose head is trained on
its embeddings of a dataset's train split (full-batch Adam from a seeded initialisation: another seed,
another model of the same recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from pipeline.data.shards import read_classes
from pipeline.models import LoadedModel

__all__ = ["MODEL", "SIZE", "train_head"]
MODEL = "efficientnet_lite0"
SIZE = 32


def train_head(dataset: Path, out: Path, seed: int = 0, classes: Sequence[str] | None = None,
               steps: int = 300) -> Path:
    """Save into ``out`` a model of ``classes`` (default: the dataset's) whose head is trained on the dataset's
    train split; returns ``out``."""
    classes = list(classes or read_classes(dataset))
    torch.manual_seed(seed)
    model = LoadedModel.pretrained(MODEL, len(classes), SIZE, classes=classes, seed=seed)
    out_ = model.outputs(model.inputs(dataset, "train"), ("embeddings",), desc="embed train")
    names = read_classes(dataset)
    x = out_["embeddings"].float()
    y = torch.as_tensor([classes.index(names[int(i)]) for i in out_.labels])
    head = model.network.get_classifier()
    torch.nn.init.normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        optimiser.step()
    model.save(out, {"trained": f"head on {dataset} train split, seed {seed}"})
    return out
