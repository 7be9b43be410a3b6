"""Seeing what a model learned: class "ideal" inputs, adversarial pairs, FGSM accuracy.

All three work in pixel space (images in [0, 1]); :class:`PixelModel` puts the model's own
normalisation in front, so perturbation sizes are in pixel units (1/255 = one grey level) and mean
the same for every backbone.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.evaluation.metrics import rnd
from pipeline.models.preprocess import Preprocessing

__all__ = ["PixelModel", "total_variation", "class_ideal_inputs", "adversarial_pair", "fgsm_accuracy"]


class PixelModel(nn.Module):
    """A classifier that takes [0, 1] pixels: the model's own normalisation, then the network."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model, self.preprocessing = model, preprocessing

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessing.normalise(pixels))


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image (shape (n,))."""
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    return dh + dw


def class_ideal_inputs(model: PixelModel, classes: Sequence[int], size: int, steps: int = 150,
                       lr: float = 0.05, tv_weight: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Images that maximise each class score, by gradient ascent from noise with a TV penalty.

    The image is optimised through a sigmoid (so it stays in [0, 1] without clipping), with small
    random shifts each step (jitter) so that the result is a pattern, not a pixel-exact exploit.

    Args:
        model: the classifier in pixel space, in eval mode.
        classes: class indices to visualise.
        size: image side in pixels.
        steps: Adam steps.
        lr: Adam learning rate on the pre-sigmoid image.
        tv_weight: weight of the total-variation penalty (higher: smoother).
        seed: seed of the starting noise.
    Returns:
        (images of shape (len(classes), 3, size, size) in [0, 1], softmax probability of each
        target class on its final image).
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    raw = (0.5 * torch.randn(len(classes), 3, size, size, generator=gen)).to(device).requires_grad_(True)
    target = torch.tensor(list(classes), device=device)
    opt = torch.optim.Adam([raw], lr=lr)
    for _ in range(steps):
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        image = torch.roll(torch.sigmoid(raw), shifts=(dx, dy), dims=(2, 3))
        score = model(image).gather(1, target[:, None]).squeeze(1)
        loss = (-score + tv_weight * size * total_variation(image)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = torch.sigmoid(raw)
        probs = F.softmax(model(final), dim=1).gather(1, target[:, None]).squeeze(1)
    return final.detach().cpu(), [rnd(p) for p in probs.cpu().tolist()]


def adversarial_pair(model: PixelModel, image: torch.Tensor, label: int, step: float = 1 / 255,
                     max_steps: int = 100) -> dict:
    """Nudge a correctly classified image by signed-gradient steps until the model changes its mind.

    Args:
        model: the classifier in pixel space, in eval mode.
        image: (3, H, W) pixels in [0, 1].
        label: its true class index (the model must predict it).
        step: size of one step in pixel units (L-infinity).
        max_steps: give up after this many steps.
    Returns:
        original, adversarial (tensors (3, H, W)), label, predicted (class after the attack; equals
        label when it never flipped), flipped, steps, linf and l2 (perturbation size in pixel units),
        confidence (softmax of the new prediction).
    """
    device = next(model.parameters()).device
    x0 = image.to(device)[None]
    with torch.no_grad():
        start = int(model(x0).argmax(1))
    if start != label:
        raise ValueError(f"adversarial pair needs a correctly classified image: label {label}, predicted {start}")
    x, steps, predicted = x0.clone(), 0, label
    while predicted == label and steps < max_steps:
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), torch.tensor([label], device=device))
        grad, = torch.autograd.grad(loss, x)
        x = (x.detach() + step * grad.sign()).clamp(0, 1)
        steps += 1
        with torch.no_grad():
            logits = model(x)
        predicted = int(logits.argmax(1))
    delta = (x - x0)[0]
    return {"original": x0[0].cpu(), "adversarial": x[0].detach().cpu(), "label": label, "predicted": predicted,
            "flipped": predicted != label, "steps": steps, "linf": rnd(delta.abs().max()),
            "l2": rnd(delta.norm()), "confidence": rnd(F.softmax(logits, 1)[0, predicted])}


def fgsm_accuracy(model: PixelModel, images: torch.Tensor, labels: torch.Tensor, epsilons: Sequence[float],
                  batch_size: int = 128) -> dict[str, float]:
    """Accuracy under a one-step FGSM attack at each epsilon (pixel units, L-infinity).

    Args:
        model: the classifier in pixel space, in eval mode.
        images: (n, 3, H, W) pixels in [0, 1].
        labels: (n,) true class indices.
        epsilons: attack sizes; 0 gives the clean accuracy.
        batch_size: images per forward/backward pass.
    Returns:
        ``{str(epsilon): accuracy}``.
    """
    device = next(model.parameters()).device
    correct = {eps: 0 for eps in epsilons}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).requires_grad_(True)
        y = labels[start:start + batch_size].to(device)
        grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        with torch.no_grad():
            for eps in epsilons:
                adv = (x + eps * grad.sign()).clamp(0, 1)
                correct[eps] += int((model(adv).argmax(1) == y).sum())
    return {f"{eps:g}": rnd(correct[eps] / len(images)) for eps in epsilons}
