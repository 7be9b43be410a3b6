"""The frozen backbone's outputs, held in memory for one phase: run the frozen layers once, then train only
the head for many epochs (the on-disk embeddings that select scores are pipeline/models/embedding_cache.py).

When every block below the head is frozen and its BatchNorm layers keep their statistics, the
backbone is a fixed function: its pooled outputs (timm's ``forward_head(..., pre_logits=True)``)
are computed once and the epochs train the head on them: one clean pass by default, or, when the run
augments and ``finetune.cache_views`` > 0, that many augmented passes, epoch ``e`` training on view
``e mod views``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.common.logs import get_logger
from pipeline.models.inference import run_batches, split_forward

__all__ = ["supports_cache", "CachedHead", "FeatureViews", "as_batch", "compute_features", "cache_views"]
log = get_logger(__name__)


def supports_cache(model: nn.Module) -> bool:
    """True when the model exposes timm's split into backbone features and a classifier head."""
    return all(callable(getattr(model, name, None)) for name in ("forward_features", "forward_head",
                                                                 "get_classifier"))


class CachedHead(nn.Module):
    """The part of a timm model after the pooled features: dropout (as the model has it) and classifier.

    It shares the classifier's parameters with the model, so training it trains the model's head.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.drop_rate = float(getattr(model, "drop_rate", 0.0))
        self.classifier = model.get_classifier()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.drop_rate > 0:
            features = nn.functional.dropout(features, p=self.drop_rate, training=self.training)
        return self.classifier(features)


class FeatureViews(Dataset):
    """Cached features as a Dataset of (feature vector, label); ``set_epoch`` picks the view."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor):
        if views.dim() != 3 or views.shape[1] != labels.shape[0]:
            raise ValueError(f"feature views must be [views, items, dim] matching {labels.shape[0]} labels, "
                             f"got {tuple(views.shape)}")
        self.views, self.labels, self.view = views, labels, 0

    def set_epoch(self, epoch: int) -> None:
        """Use view ``epoch mod views`` from now on."""
        self.view = epoch % self.views.shape[0]

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views[self.view, index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader fetches a whole batch with one indexing op (use collate_fn=as_batch)
        index = torch.as_tensor(indices)
        return self.views[self.view, index], self.labels[index]


def as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate function for :class:`FeatureViews`: its ``__getitems__`` already returns a batch."""
    return batch


def compute_features(model: nn.Module, loader: DataLoader, device: torch.device,
                     autocast: Callable[[], AbstractContextManager], desc: str = "caching features"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features of every item of a sequential loader, in loader order.

    Args:
        model: a timm-style model (eval mode is set here).
        loader: yields (images, labels), not shuffled.
        device: where the model is.
        autocast: returns the precision context to run the backbone under.
        desc: progress label.
    Returns:
        (features [N, D] float32 on the CPU, labels [N] int64).
    """
    out = run_batches(model, split_forward(model, ("embeddings",)), loader, device, autocast=autocast, desc=desc)
    return out["embeddings"], out.labels


def cache_views(model: nn.Module, make_loader: Callable[[], DataLoader], views: int, seed: int,
                device: torch.device, autocast: Callable[[], AbstractContextManager]) -> FeatureViews:
    """Compute ``views`` passes of features (each pass re-draws the loader's augmentation).

    Args:
        model: the model whose frozen backbone is cached.
        make_loader: builds a fresh sequential loader over the training images.
        views: number of passes (1 without augmentation).
        seed: seeds pass ``v`` with ``seed + v`` so that a resumed run caches the same views.
        device: where the model is.
        autocast: precision context factory.
    Returns:
        The cached views as a Dataset.
    """
    passes, labels = [], None
    for view in range(views):
        torch.manual_seed(seed + view)
        feats, labels = compute_features(model, make_loader(), device, autocast,
                                         desc=f"caching features (view {view + 1}/{views})")
        passes.append(feats)
    log.info("cached %d view(s) of %d x %d backbone features", views, *passes[0].shape)
    return FeatureViews(torch.stack(passes), labels)
