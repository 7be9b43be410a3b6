"""ImageNet-C style corruptions at severities 1-5, built on torchvision.transforms.v2, seeded per image.

The severity ladders follow ImageNet-C (Hendrycks & Dietterich, 2019) where it defines the corruption;
sizes in pixels (blur sigma) are scaled from ImageNet's 224 px to the image's side (but not below half,
or small inputs would not blur at all). Randomness (noise, rotation direction) comes from a seed derived
from (seed, image id, corruption, severity), so a run is reproducible image by image.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Callable

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

__all__ = ["CORRUPTIONS", "SEVERITY_TABLE", "corrupt", "corruption_seed", "encode_png"]

# Level of each corruption at severities 1..5.
SEVERITY_TABLE: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise std, pixel range [0, 1]
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),        # sigma in pixels at 224 px
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),            # contrast factor (1 = unchanged)
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),           # added to every channel (ImageNet-C adds to HSV value)
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),            # downscale factor before upscaling back
    "jpeg": (25, 18, 15, 10, 7),                       # JPEG quality
    "rotation": (6.0, 12.0, 18.0, 24.0, 30.0),         # degrees, direction drawn per image
}
_REFERENCE_SIDE = 224


def _noise(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):  # v2's gaussian_noise draws from the global generator
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        return F.gaussian_noise(x, sigma=level, clip=True)


def _blur(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    # Scaled from 224 px, but at least half the ImageNet sigma: below that small images do not blur at all.
    sigma = level * max(max(x.shape[-2:]) / _REFERENCE_SIDE, 0.5)
    kernel = 2 * math.ceil(3 * sigma) + 1  # +-3 sigma, odd
    return F.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _contrast(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    return F.adjust_contrast(x, level)


def _brightness(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    # Additive, like ImageNet-C: a multiplicative factor would leave black ink untouched.
    return (x + level).clamp(0, 1)


def _pixelate(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    height, width = x.shape[-2:]
    small = F.resize(x, [max(1, round(height * level)), max(1, round(width * level))],
                     interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return F.resize(small, [height, width], interpolation=F.InterpolationMode.NEAREST)


def _jpeg(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    return F.to_dtype(F.jpeg(F.to_dtype(x, torch.uint8, scale=True), quality=int(level)), torch.float32, scale=True)


def _rotation(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    sign = 1.0 if torch.rand(1, generator=gen).item() < 0.5 else -1.0
    # Rotate an edge-padded copy and crop back: the corners get the border's colours, not a fill frame.
    height, width = x.shape[-2:]
    pad = -(-max(height, width) // 4)  # enough for 30 degrees (needs side * 0.18)
    padded = F.pad(x, [pad, pad, pad, pad], padding_mode="edge")
    turned = F.rotate(padded, sign * level, interpolation=F.InterpolationMode.BILINEAR)
    return F.center_crop(turned, [height, width])


CORRUPTIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _noise, "gaussian_blur": _blur, "contrast": _contrast, "brightness": _brightness,
    "pixelate": _pixelate, "jpeg": _jpeg, "rotation": _rotation,
}


def corruption_seed(seed: int, image_id: str, corruption: str, severity: int) -> int:
    """The seed of one (image, corruption, severity): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{image_id}:{corruption}:{severity}".encode()).hexdigest()
    return int(digest[:15], 16)


def corrupt(image: Image.Image, corruption: str, severity: int, seed: int) -> Image.Image:
    """Apply one corruption at one severity.

    Args:
        image: the clean image (any mode; converted to RGB).
        corruption: a key of CORRUPTIONS.
        severity: 1-5 (0 returns the RGB image unchanged).
        seed: from :func:`corruption_seed`.
    Returns:
        The corrupted RGB image, same size.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r} (known: {', '.join(CORRUPTIONS)})")
    if not 0 <= severity <= 5:
        raise ValueError(f"severity {severity}: must be 0-5")
    rgb = image.convert("RGB")
    if severity == 0:
        return rgb
    gen = torch.Generator().manual_seed(seed)
    x = F.to_dtype(F.pil_to_tensor(rgb), torch.float32, scale=True)
    out = CORRUPTIONS[corruption](x, float(SEVERITY_TABLE[corruption][severity - 1]), gen)
    return F.to_pil_image(F.to_dtype(out.clamp(0, 1), torch.uint8, scale=True))


def encode_png(image: Image.Image) -> bytes:
    """Encode an image losslessly (so a JPEG corruption is not compounded by storage)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
