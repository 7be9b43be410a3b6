"""What the drift tests read from a model: pre-logit embeddings and softmax outputs, in one pass."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.common.logs import progress

__all__ = ["model_outputs", "images_outputs"]


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                  total: int | None = None, desc: str = "embed") -> tuple[np.ndarray, np.ndarray | None]:
    """Run a timm-API model in eval mode and collect embeddings and softmax outputs.

    Args:
        model: has ``forward_features`` and ``forward_head(x, pre_logits=True)``; its classifier
            (``get_classifier()``) gives the logits; a model without one (``num_classes=0``) gives no softmax.
        batches: input tensors (B, 3, H, W), already transformed.
        device: where to run.
        total: number of batches, for the progress bar.
        desc: progress bar label.
    Returns:
        (embeddings (N, D) float32, softmax (N, C) float32 or None).
    """
    model.eval().to(device)
    classifier = model.get_classifier()
    has_head = not isinstance(classifier, nn.Identity) and getattr(model, "num_classes", 1) > 0
    embeddings, probs = [], []
    for images in progress(batches, desc, total=total, unit="batch"):
        emb = model.forward_head(model.forward_features(images.to(device)), pre_logits=True)
        embeddings.append(emb.float().cpu().numpy())
        if has_head:
            probs.append(torch.softmax(classifier(emb).float(), dim=1).cpu().numpy())
    return np.concatenate(embeddings), (np.concatenate(probs) if has_head else None)


def images_outputs(model: nn.Module, images: Sequence[Image.Image], transform: Callable[[Image.Image], torch.Tensor],
                   device: torch.device, batch_size: int = 64,
                   desc: str = "embed") -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`model_outputs` over in-memory PIL images (transformed batch by batch).

    Args:
        model: as for :func:`model_outputs`.
        images: the images.
        transform: PIL image -> (3, H, W) tensor (e.g. ``pipeline.features.eval_transform``).
        device: where to run.
        batch_size: images per forward pass.
        desc: progress bar label.
    Returns:
        (embeddings, softmax or None), rows in the order of ``images``.
    """
    if not images:
        raise ValueError("no images to embed")
    batches = (torch.stack([transform(im) for im in images[i:i + batch_size]])
               for i in range(0, len(images), batch_size))
    return model_outputs(model, batches, device, total=-(-len(images) // batch_size), desc=desc)
