"""Assessing one trained model: scores on the test split and the domain-shift set, and what it learned.

Inputs: a model in eval mode with its preprocessing (image size, mean, std), the dataset directory
and the domain-shift ("current") directory. Outputs are plain dicts for metrics.json plus the tensors
the figures need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.data.shards import ShardImageDataset, read_manifest
from pipeline.evaluation.interpret import PixelModel, adversarial_pair, class_ideal_inputs, fgsm_accuracy
from pipeline.evaluation.metrics import classification_metrics
from pipeline.evaluation.predict import load_pixels, predict_probs, robustness
from pipeline.training.augment import eval_transform

__all__ = ["Subject", "shift_sample", "score", "explain", "attack_set"]


@dataclass
class Subject:
    """A model under assessment and how to feed it."""

    name: str
    model: nn.Module  # eval mode, on ``device``
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device


def shift_sample(current_dir: str | os.PathLike, per_cell: int | None, seed: int) -> list[str]:
    """Ids of the domain-shift images to score: ``per_cell`` per corruption x severity (all when None).

    Args:
        current_dir: the domain-shift dataset directory.
        per_cell: images per (corruption, severity) cell.
        seed: seed of the draw.
    Returns:
        The ids, in manifest order.
    """
    rows = read_manifest(current_dir)
    missing = [c for c in ("corruption", "severity") if c not in rows.columns]
    if missing:
        raise ValueError(f"{current_dir}: manifest lacks {missing}; expected a set written by `tlops shift`")
    if per_cell is None:
        return rows["id"].tolist()
    order = np.random.default_rng(seed).permutation(len(rows))  # a seeded shuffle, then the first k per cell
    picked = rows.iloc[order].groupby(["corruption", "severity"]).head(per_cell)
    return rows[rows["id"].isin(set(picked["id"]))]["id"].tolist()


def score(subject: Subject, dataset_dir: str | os.PathLike, current_dir: str | os.PathLike,
          shift_ids: Sequence[str], classes: Sequence[str], ece_bins: int, batch_size: int) -> dict:
    """Metrics of one model on the test split and on the domain-shift set, plus robustness.

    Args:
        subject: the model.
        dataset_dir: the dataset (its test split is scored).
        current_dir: the domain-shift set.
        shift_ids: the domain-shift images to score.
        classes: class names in label-index order.
        ece_bins: calibration bins.
        batch_size: images per forward pass.
    Returns:
        ``{"test": metrics, "shift": metrics, "robustness": {corruption: {severity: acc}}, "images_per_s"}``.
    """
    transform = eval_transform(subject.image_size, subject.mean, subject.std)
    test = ShardImageDataset(dataset_dir, "test", transform)
    probs, labels, speed = predict_probs(subject.model, test, subject.device, batch_size, f"{subject.name} test")
    shift = ShardImageDataset(current_dir, None, transform, ids=shift_ids)
    s_probs, s_labels, _ = predict_probs(subject.model, shift, subject.device, batch_size, f"{subject.name} shift")
    return {"test": classification_metrics(probs, labels, classes, ece_bins),
            "shift": classification_metrics(s_probs, s_labels, classes, ece_bins),
            "robustness": robustness(shift.rows, s_probs, s_labels), "images_per_s": round(speed, 1)}


def explain(subject: Subject, images: torch.Tensor, labels: torch.Tensor, show: Sequence[int],
            epsilons: Sequence[float], ideal_steps: int, tv_weight: float, adv_step: float, adv_max_steps: int,
            seed: int) -> dict:
    """Ideal inputs, adversarial pairs and FGSM accuracy of one model.

    Args:
        subject: the model.
        images: test images in [0, 1] pixels at the model's input size.
        labels: their labels.
        show: class indices to visualise.
        epsilons: FGSM sizes (pixel units).
        ideal_steps: gradient-ascent steps.
        tv_weight: total-variation weight.
        adv_step: pixel step of each adversarial nudge.
        adv_max_steps: nudges before giving up.
        seed: seed of the ideal inputs' starting noise.
    Returns:
        ``{"ideal": (images, probs), "pairs": [pair...], "fgsm": {eps: acc}}``; pairs are made from the
        first correctly classified test image of each shown class.
    """
    pixel = PixelModel(subject.model, subject.mean, subject.std).to(subject.device).eval()
    for p in pixel.parameters():
        p.requires_grad_(False)  # attacks need input gradients only
    ideal = class_ideal_inputs(pixel, show, subject.image_size, ideal_steps, tv_weight=tv_weight, seed=seed)
    with torch.no_grad():
        predicted = torch.cat([pixel(images[i:i + 256].to(subject.device)).argmax(1).cpu()
                               for i in range(0, len(images), 256)])
    pairs = []
    for cls in show:
        hits = np.flatnonzero(((labels == cls) & (predicted == cls)).numpy())
        if hits.size:
            pairs.append(adversarial_pair(pixel, images[hits[0]], cls, adv_step, adv_max_steps))
    return {"ideal": ideal, "pairs": pairs, "fgsm": fgsm_accuracy(pixel, images, labels, epsilons)}


def attack_set(dataset_dir: str | os.PathLike, size: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of ``count`` test images as [0, 1] pixels with their labels."""
    rows = read_manifest(dataset_dir)
    test = rows[rows["split"] == "test"]
    ids = test.sample(min(count, len(test)), random_state=seed)["id"].tolist()
    images, labels, _ = load_pixels(dataset_dir, "test", size, ids)
    return images, labels

