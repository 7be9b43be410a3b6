"""Training augmentation suited to the input size (the model's preprocessing runs around it).

Small inputs (below 96 px, e.g. upscaled 8x8 digits) get ``light`` augmentation: small shifts,
rotations and scale changes only. No flips and no aggressive crops, which change what a small
symbol means (a flipped digit is another symbol). Larger inputs get ``standard``: random resized
crops, horizontal flips and mild colour jitter, the ImageNet fine-tuning recipe.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["AUGMENTS", "BorderFillAffine", "resolve_augment", "augment_steps"]

AUGMENTS = ("none", "light", "standard")
SMALL_INPUT = 96  # px: below this, `auto` picks light augmentation


def resolve_augment(name: str, image_size: int) -> str:
    """Turn ``auto`` into ``light`` (small inputs) or ``standard``; check other names."""
    if name == "auto":
        return "light" if image_size < SMALL_INPUT else "standard"
    if name not in AUGMENTS:
        raise ValueError(f"train.augment = {name!r}: not one of auto, {', '.join(AUGMENTS)}")
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


def augment_steps(augment: str, size: int) -> list[torch.nn.Module]:
    """The random steps of an augmentation, run on the resized uint8 image (see Preprocessing.transform).

    Args:
        augment: none, light or standard (resolve ``auto`` first with :func:`resolve_augment`).
        size: square input side in pixels.
    Returns:
        The steps (none for ``none``).
    """
    if augment == "none":
        return []
    if augment == "light":
        return [BorderFillAffine()]
    if augment == "standard":
        return [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                v2.ColorJitter(0.2, 0.2, 0.2)]
    raise ValueError(f"augment {augment!r} is not one of {', '.join(AUGMENTS)}")
