"""Train and eval transforms suited to the input size.

Small inputs (below 96 px, e.g. upscaled 8x8 digits) get ``light`` augmentation: small shifts,
rotations and scale changes only. No flips and no aggressive crops, which change what a small
symbol means (a flipped digit is another symbol). Larger inputs get ``standard``: random resized
crops, horizontal flips and mild colour jitter, the ImageNet fine-tuning recipe.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["AUGMENTS", "BorderFillAffine", "resolve_augment", "train_transform", "eval_transform"]

AUGMENTS = ("none", "light", "standard")
SMALL_INPUT = 96  # px: below this, `auto` picks light augmentation


def resolve_augment(name: str, image_size: int) -> str:
    """Turn ``auto`` into ``light`` (small inputs) or ``standard``; check other names."""
    if name == "auto":
        return "light" if image_size < SMALL_INPUT else "standard"
    if name not in AUGMENTS:
        raise ValueError(f"finetune.augment = {name!r}: not one of auto, {', '.join(AUGMENTS)}")
    return name


class BorderFillAffine(torch.nn.Module):
    """A small random rotation, shift and scale whose uncovered corners take the image's border colour.

    A constant black fill would paint dark wedges into light-background images (scanned digits,
    documents), a pattern the validation images never show.
    """

    def __init__(self, degrees: float = 10.0, translate: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)):
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Transform a uint8 [C, H, W] image."""
        height, width = image.shape[-2:]
        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1).float()
        draw = torch.rand(4).tolist()
        angle = (2 * draw[0] - 1) * self.degrees
        shift = [round((2 * draw[1] - 1) * self.translate * width), round((2 * draw[2] - 1) * self.translate * height)]
        zoom = self.scale[0] + draw[3] * (self.scale[1] - self.scale[0])
        return F.affine(image, angle=angle, translate=shift, scale=zoom, shear=[0.0, 0.0],
                        fill=border.median(dim=1).values.tolist())


def _to_input(size: int, mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std))]


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """PIL image -> normalised float tensor of ``size`` x ``size`` (no randomness).

    Args:
        size: square input side in pixels.
        mean: per-channel mean of the model's preprocessing.
        std: per-channel std.
    Returns:
        The transform.
    """
    return v2.Compose(_to_input(size, mean, std))


def train_transform(augment: str, size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """PIL image -> augmented normalised tensor.

    Args:
        augment: none, light or standard (resolve ``auto`` first with :func:`resolve_augment`).
        size: square input side in pixels.
        mean: per-channel mean.
        std: per-channel std.
    Returns:
        The transform.
    """
    if augment == "none":
        return eval_transform(size, mean, std)
    if augment == "light":
        randomness = [BorderFillAffine()]
    elif augment == "standard":
        randomness = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                      v2.ColorJitter(0.2, 0.2, 0.2)]
    else:
        raise ValueError(f"augment {augment!r} is not one of {', '.join(AUGMENTS)}")
    steps = _to_input(size, mean, std)
    # geometric steps run on the resized uint8 image, before scaling to float and normalising
    return v2.Compose(steps[:2] + randomness + steps[2:])
