"""A local folder in ImageFolder layout: one subfolder per class, images at any depth below it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.data.sources.base import Confinement, Record, Source, ordered_parallel

__all__ = ["FolderSource"]


class FolderSource(Source):
    """Stream every file under ``root/<class>/**``; files elsewhere are skipped, and files that fail to read
    or are refused (links out of the folder, non-regular files, over the size cap) are listed for the
    packer to judge."""

    def __init__(self, root: str | Path, confinement: Confinement, workers: int = 8, unlabelled: bool = False):
        root = Path(root).expanduser()
        super().__init__(f"folder {root}", unlabelled)
        if not root.exists():
            raise FileNotFoundError(f"{root}: source folder does not exist")
        if not root.is_dir():
            raise ValueError(f"{root}: source is a file, expected a folder with one subfolder per class "
                             "(or a .csv/.parquet manifest)")
        self.root, self.workers = root, workers
        self.confinement = confinement
        self.class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.class_dirs and not unlabelled:
            raise ValueError(f"{root}: no class folders (ImageFolder layout: {root}/<class>/<image>)")
        self.labels = {p.name for p in self.class_dirs}

    def records(self) -> Iterator[Record]:
        top = sorted(p for p in self.root.iterdir() if p.is_file() or p.is_symlink())
        if not self.unlabelled:
            for path in top:
                self.skip(str(path), "not inside a class folder")
        for path, data, error in ordered_parallel(self.confinement.read, self._files(top), self.workers):
            if error is not None:
                self.skip_failed_read(str(path), error)
            else:
                parts = path.relative_to(self.root).parts
                yield Record(str(path), parts[0] if len(parts) > 1 else "", data)

    def _files(self, top: list[Path]) -> Iterator[Path]:
        if self.unlabelled:
            yield from (p for p in top if not p.name.startswith("."))
        for class_dir in self.class_dirs:
            files = sorted(p for p in class_dir.rglob("*") if not p.is_dir())
            if not files and not self.unlabelled:
                raise ValueError(f"{class_dir}: class folder '{class_dir.name}' has no files")
            for path in files:
                if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
                    self.skip(str(path), "hidden file")
                else:
                    yield path

