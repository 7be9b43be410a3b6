"""Assessing one trained model: scores on the test split and the domain-shift set, and what it learned.

Inputs: a loaded model (its own preprocessing), the dataset directory and the domain-shift
("current") directory. Outputs are plain dicts for metrics.json plus the tensors the figures need.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from pipeline.data.shards import ShardImageDataset, read_manifest
from pipeline.evaluation.interpret import PixelModel, adversarial_pair, class_ideal_inputs, fgsm_accuracy
from pipeline.evaluation.metrics import classification_metrics
from pipeline.evaluation.robustness import robustness
from pipeline.models import LoadedModel, Preprocessing
from pipeline.models.inference import run_batches

__all__ = ["scorable_shift", "score", "explain", "attack_set"]


def scorable_shift(current_dir: str | os.PathLike) -> tuple[list[str] | None, str | None]:
    """Ids of every domain-shift image, in manifest order: the whole set, as drift scores it, so the two stages
    report one "accuracy on the shifted set" (its size is set by ``shift.per_cell``); or none, with why the set
    cannot be scored.

    Args:
        current_dir: the domain-shift dataset directory.
    Returns:
        (the ids, None), or (None, the reason): images without a label (``shift.source`` an unlabelled batch, such
        as what a service sampled: drift checks it, but no accuracy can be known on it).
    """
    rows = read_manifest(current_dir)
    missing = [c for c in ("corruption", "severity") if c not in rows.columns]
    if missing:
        raise ValueError(f"{current_dir}: manifest lacks {missing}; expected a set written by `tlops shift`")
    unlabelled = rows.loc[rows["label_idx"] < 0]
    if not unlabelled.empty:
        example = unlabelled["source_path"].iloc[0]
        return None, (f"{len(unlabelled)} of its {len(rows)} image(s) have no label (e.g. {example}): shift.source is "
                    "an unlabelled batch, which drift checks but no accuracy can be measured on")
    return rows["id"].tolist(), None


def score(model: LoadedModel, name: str, dataset_dir: str | os.PathLike, current_dir: str | os.PathLike,
          shift_ids: Sequence[str] | None, classes: Sequence[str], ece_bins: int,
          batch_size: int) -> tuple[dict, dict[str, np.ndarray | None]]:
    """Metrics of one model on the test split and on the domain-shift set, plus robustness.

    Args:
        model: the model.
        name: its role in the comparison (progress labels).
        dataset_dir: the dataset (its test split is scored).
        current_dir: the domain-shift set.
        shift_ids: the domain-shift images to score; None: the set cannot be scored (:func:`scorable_shift`).
        classes: class names in label-index order.
        ece_bins: calibration bins.
        batch_size: images per forward pass.
    Returns:
        (``{"test": metrics, "shift": metrics, "robustness": {corruption: {severity: acc}}, "images_per_s",
        "classes_predicted"}``, per image whether the model is right: ``{"test": [...], "shift": [...]}``,
        in the order of the test split and of ``shift_ids``, for paired comparisons). Without ``shift_ids`` the
        shift metrics and correctness are None and robustness is empty.
    """
    probs, labels, speed = model.predict(model.inputs(dataset_dir, "test"), batch_size=batch_size,
                                         desc=f"{name} test")
    scores = {"test": classification_metrics(probs, labels, classes, ece_bins), "shift": None, "robustness": {},
              "images_per_s": round(speed, 1), "classes_predicted": int(np.unique(probs.argmax(1)).size)}
    correct = {"test": probs.argmax(1) == labels, "shift": None}
    if shift_ids is not None:
        shift = model.inputs(current_dir, None, ids=shift_ids)
        s_probs, s_labels, _ = model.predict(shift, batch_size=batch_size, desc=f"{name} shift")
        scores.update(shift=classification_metrics(s_probs, s_labels, classes, ece_bins),
                      robustness=robustness(shift.rows, s_probs, s_labels))
        correct["shift"] = s_probs.argmax(1) == s_labels
    return scores, correct


def explain(model: LoadedModel, images: torch.Tensor, labels: torch.Tensor, show: Sequence[int],
            epsilons: Sequence[float], ideal_steps: int, tv_weight: float, adv_step: float, adv_max_steps: int,
            seed: int) -> dict:
    """Ideal inputs, adversarial pairs and FGSM accuracy of one model.

    Args:
        model: the model.
        images: test images in [0, 1] pixels at the model's input size (:func:`attack_set`).
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
    pixel = PixelModel(model.network, model.preprocessing).to(model.device).eval()
    for p in pixel.parameters():
        p.requires_grad_(False)  # attacks need input gradients only
    ideal = class_ideal_inputs(pixel, show, model.preprocessing.image_size, ideal_steps, tv_weight=tv_weight,
                               seed=seed)
    batches = [(images[i:i + 256], labels[i:i + 256]) for i in range(0, len(images), 256)]
    predicted = run_batches(pixel, lambda x: {"logits": pixel(x)}, batches, model.device,
                            desc="attack set", show_progress=False)["logits"].argmax(1)
    pairs = []
    for cls in show:
        hits = np.flatnonzero(((labels == cls) & (predicted == cls)).numpy())
        if hits.size:
            pairs.append(adversarial_pair(pixel, images[hits[0]], cls, adv_step, adv_max_steps))
    return {"ideal": ideal, "pairs": pairs, "fgsm": fgsm_accuracy(pixel, images, labels, epsilons)}


def attack_set(dataset_dir: str | os.PathLike, preprocessing: Preprocessing, count: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of ``count`` test images as [0, 1] pixels (the model's resize) with their labels."""
    rows = read_manifest(dataset_dir)
    test = rows[rows["split"] == "test"]
    ids = test.sample(min(count, len(test)), random_state=seed)["id"].tolist()
    dataset = ShardImageDataset(dataset_dir, "test", preprocessing.pixels(), ids=ids)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    dataset.close()
    return torch.stack(images), torch.tensor(labels)
