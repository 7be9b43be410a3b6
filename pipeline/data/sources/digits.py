"""scikit-learn's 1,797 real handwritten digits (shipped inside the package: no download) as RGB PNGs."""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.data.sources.base import Record, Source

__all__ = ["DigitsSource"]


class DigitsSource(Source):
    """The 8x8 digits, dark ink on white, upscaled (bilinear) to ``size`` pixels and stored as RGB PNG."""

    def __init__(self, size: int):
        super().__init__(f"sklearn-digits at {size}px")
        self.size = size

    def records(self) -> Iterator[Record]:
        from sklearn.datasets import load_digits  # local: sklearn is slow to import

        digits = load_digits()
        self.labels = {str(t) for t in digits.target_names}
        for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
            # Values are ink 0..16; invert so the digit is dark on a white page, like a scan.
            gray = (255 - pixels * (255 / 16)).round().astype(np.uint8)
            image = Image.fromarray(gray, mode="L").resize((self.size, self.size), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
            yield Record(f"sklearn-digits/{index:04d}", str(target), buf.getvalue())
