"""``torchvision:<Dataset>``: torchvision datasets that download when a network is there.

All official splits are pooled (tlops makes its own hash splits). Where the dataset keeps its images
as files (OxfordIIITPet, Flowers102) the original JPEG bytes are stored; otherwise each image is
encoded as PNG. Downloading needs ``source.allow_download: true``; without it a missing dataset is an
error saying so. ``FakeData`` (random images, no download) exercises the same code offline.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from pipeline.common.logs import get_logger
from pipeline.data.sources.base import Record, Source

__all__ = ["TorchvisionSource", "TORCHVISION_DATASETS"]
log = get_logger(__name__)


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to build one torchvision dataset: its splits, and the attribute listing its image files."""

    splits: tuple[str | None, ...]
    files_attr: str | None = None  # private attribute holding image paths, when there is one
    kwargs: dict[str, Any] = field(default_factory=dict)
    downloads: bool = True


TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "OxfordIIITPet": TorchvisionSpec(("trainval", "test"), files_attr="_images"),  # 37 cat and dog breeds
    "Flowers102": TorchvisionSpec(("train", "val", "test"), files_attr="_image_files"),
    "FakeData": TorchvisionSpec((None,), kwargs={"size": 60, "image_size": (3, 32, 32), "num_classes": 3},
                                downloads=False),
}


class TorchvisionSource(Source):
    """Stream a torchvision dataset's images with its class names as labels."""

    def __init__(self, name: str, root: str | Path, allow_download: bool):
        super().__init__(f"torchvision:{name}")
        if name not in TORCHVISION_DATASETS:
            raise ValueError(f"torchvision:{name}: unsupported dataset (supported: {', '.join(TORCHVISION_DATASETS)})")
        self.name, self.spec = name, TORCHVISION_DATASETS[name]
        self.root, self.allow_download = Path(root).expanduser(), allow_download

    def records(self) -> Iterator[Record]:
        for split in self.spec.splits:
            dataset = self._open(split)
            classes = getattr(dataset, "classes", None)
            files = getattr(dataset, self.spec.files_attr, None) if self.spec.files_attr else None
            for index in range(len(dataset)):
                path = f"torchvision:{self.name}/{split or 'all'}/{index}"
                if files is not None:
                    data, target = Path(files[index]).read_bytes(), dataset._labels[index]
                    path = str(files[index])
                else:
                    image, target = dataset[index]
                    data = _png(image)
                label = classes[int(target)] if classes else str(int(target))
                self.labels.add(label)
                yield Record(path, label, data)

    def _open(self, split: str | None) -> Any:
        import torchvision.datasets as tvd

        kwargs = dict(self.spec.kwargs)
        if split is not None:
            kwargs["split"] = split
        if self.spec.downloads:
            kwargs.update(root=str(self.root), download=self.allow_download)
            log.info("torchvision:%s split %s under %s (download %s)", self.name, split, self.root,
                     "allowed" if self.allow_download else "off")
        try:
            return getattr(tvd, self.name)(**kwargs)
        except RuntimeError as err:
            hint = "" if self.allow_download else "; set source.allow_download: true to fetch it"
            raise FileNotFoundError(f"torchvision:{self.name}: not found under {self.root} ({err}){hint}") from None


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
