"""A model's one deterministic preprocessing: upright RGB image -> normalised tensor at its input size.

Every reader that feeds a model builds its transform here, from the model's spec (or its saved
card), so selection, fine-tuning, the baseline, evaluation, drift and promotion hand the network the
very same tensor for the same image. Training augmentation is inserted into the same chain (after
the resize, on the uint8 image), so an augmented image differs from the evaluated one only by the
augmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.transforms import v2

__all__ = ["Preprocessing", "INTERPOLATIONS"]

INTERPOLATIONS = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """Input size, interpolation and normalisation of one model."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: not one of {', '.join(INTERPOLATIONS)}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def for_spec(cls, spec: Any, image_size: int) -> "Preprocessing":
        """The preprocessing of a catalog spec at ``image_size``."""
        return cls(image_size, spec.mean, spec.std, spec.interpolation)

    @classmethod
    def from_card(cls, card: Mapping[str, Any], spec: Any) -> "Preprocessing":
        """Read it back from a model card (cards written before ``interpolation`` was kept use the spec's)."""
        saved = card.get("preprocessing") or {}
        return cls(int(saved.get("image_size", card.get("input_size"))), saved.get("mean", card.get("mean")),
                   saved.get("std", card.get("std")), saved.get("interpolation", spec.interpolation))

    def to_card(self) -> dict[str, Any]:
        """JSON-able form for the model card."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    def _resize(self) -> list[nn.Module]:
        return [v2.PILToTensor(), v2.Resize((self.image_size, self.image_size),
                                            interpolation=INTERPOLATIONS[self.interpolation], antialias=True)]

    def transform(self, augment: Sequence[nn.Module] = ()) -> v2.Compose:
        """RGB PIL image -> normalised float tensor; ``augment`` steps run on the resized uint8 image."""
        return v2.Compose([*self._resize(), *self._finish(augment)])

    def resized(self) -> v2.Compose:
        """The deterministic head of :meth:`transform`: RGB PIL image -> uint8 tensor at the input size."""
        return v2.Compose(self._resize())

    def finish(self, augment: Sequence[nn.Module] = ()) -> v2.Compose:
        """The rest of :meth:`transform`, on a :meth:`resized` image: ``augment``, then the normalised float tensor
        (``transform(a)(image)`` equals ``finish(a)(resized()(image))``, random draws included)."""
        return v2.Compose(self._finish(augment))

    def _finish(self, augment: Sequence[nn.Module]) -> list[nn.Module]:
        return [*augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]

    def pixels(self) -> v2.Compose:
        """RGB PIL image -> float tensor in [0, 1] at the input size, before normalisation (attacks, figures)."""
        return v2.Compose([*self._resize(), v2.ToDtype(torch.float32, scale=True)])

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """What :meth:`transform` does after :meth:`pixels`: (pixels - mean) / std, on any device."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        return (pixels - mean) / std
