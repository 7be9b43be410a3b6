"""The fine-tuned model on disk: a state dict plus a model card, and the one function that loads it.

    <model_dir>/model.pt    the state dict (torch.save; read back with weights_only=True)
    <model_dir>/card.json   architecture, weights source and sha256, classes, preprocessing,
                            freeze plan, data version, params and metrics
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from pipeline.common.io import atomic_dir, read_json, sha256_file, write_json
from pipeline.training.augment import eval_transform

__all__ = ["STATE_DICT", "CARD", "save_model", "load_for_inference", "InferenceModel"]
STATE_DICT = "model.pt"
CARD = "card.json"
_REQUIRED = ("model", "classes", "input_size", "mean", "std", "state_dict_sha256")


def save_model(model_dir: str | Path, model: nn.Module, card: dict[str, Any]) -> Path:
    """Write the state dict and the card into ``model_dir``, replacing it whole (atomically).

    Args:
        model_dir: the output directory.
        model: the trained network (a zoo model).
        card: the model card; must hold model, classes, input_size, mean and std.
    Returns:
        The model directory.
    """
    missing = [key for key in _REQUIRED[:-1] if key not in card]
    if missing:
        raise ValueError(f"model card lacks {missing}")
    with atomic_dir(model_dir) as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / STATE_DICT)
        write_json(tmp / CARD, {**card, "state_dict": STATE_DICT, "state_dict_sha256": sha256_file(tmp / STATE_DICT)})
    return Path(model_dir)


@dataclass
class InferenceModel:
    """A loaded model ready to classify PIL images."""

    model: nn.Module
    card: dict[str, Any]
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> tuple[list[str], torch.Tensor]:
        """Classify images.

        Args:
            images: PIL images of any size and mode (converted to RGB and resized as in training).
        Returns:
            (predicted class names, class probabilities [N, classes]).
        """
        transform = eval_transform(self.card["input_size"], self.card["mean"], self.card["std"])
        batch = torch.stack([transform(image.convert("RGB")) for image in images]).to(self.device)
        probs = self.model(batch).float().softmax(1).cpu()
        return [self.classes[i] for i in probs.argmax(1).tolist()], probs


def load_for_inference(model_dir: str | Path, device: str | torch.device = "cpu") -> InferenceModel:
    """Load a fine-tuned model written by :func:`save_model`, in eval mode.

    Args:
        model_dir: the model directory (model.pt + card.json).
        device: where to put it.
    Returns:
        The model, its card and a ``predict`` for PIL images.
    Raises:
        FileNotFoundError / ValueError: missing files, a card without required keys, a state dict
        whose sha256 differs from the card's.
    """
    from pipeline.zoo import create_model  # local: the zoo imports timm and torchvision

    model_dir = Path(model_dir)
    card = read_json(model_dir / CARD)
    missing = [key for key in _REQUIRED if key not in card]
    if missing:
        raise ValueError(f"{model_dir / CARD}: model card lacks {missing}")
    weights = model_dir / card.get("state_dict", STATE_DICT)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: state dict missing")
    if sha256_file(weights) != card["state_dict_sha256"]:
        raise ValueError(f"{weights}: sha256 differs from {model_dir / CARD} (file changed after saving)")
    model = create_model(card["model"], len(card["classes"]), pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    device = torch.device(device)
    return InferenceModel(model.to(device).eval(), card, device)
