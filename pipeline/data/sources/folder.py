"""A local folder in ImageFolder layout: one subfolder per class, images at any depth below it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.data.sources.base import Confinement, Record, Source, ordered_parallel

__all__ = ["FolderSource"]


class FolderSource(Source):
    """Stream every file under ``root/<class>/**``; files elsewhere are skipped, and files that fail to read
    or are refused (links out of the folder, non-regular files, over the size cap) are listed for the
    packer to judge.

    A linked folder (a class folder, or one below it) is walked like a linked file is read: only when it
    resolves inside the source's folder or ``source.allowed_roots``, and never into itself (a loop);
    otherwise it is refused by name, with where it points."""

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
        self.class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                                 and self._walkable(p))
        if not self.class_dirs and not unlabelled:
            raise ValueError(f"{root}: no class folders (ImageFolder layout: {root}/<class>/<image>)")
        self.labels = {p.name for p in self.class_dirs}

    def records(self) -> Iterator[Record]:
        top = sorted(p for p in self.root.iterdir() if p.is_file() or (p.is_symlink() and not p.is_dir()))
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
            files = sorted(self._walk(class_dir))
            if not files and not self.unlabelled:
                raise ValueError(f"{class_dir}: class folder '{class_dir.name}' has no files")
            for path in files:
                if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
                    self.skip(str(path), "hidden file")
                else:
                    yield path


    def _walk(self, folder: Path) -> Iterator[Path]:
        """Every non-folder entry below ``folder``, through the linked folders :meth:`_walkable` admits."""
        for entry in folder.iterdir():
            if not entry.is_dir():
                yield entry  # files, links to files (checked when read), broken links (unreadable)
            elif not entry.is_symlink() or self._walkable(entry):
                yield from self._walk(entry)

    def _walkable(self, folder: Path) -> bool:
        """A real folder, or a linked one that resolves inside the roots and not around itself; a refused
        link is listed (``refused: ...``, so the ingest fails naming it) and not walked."""
        if not folder.is_symlink():
            return True
        target = folder.resolve()
        if not self.confinement.admits(target):
            reason = (f"a folder link outside the source's folder (it resolves to {target}); add its folder to "
                      "source.allowed_roots to read it")
        elif folder.parent.resolve().is_relative_to(target):
            reason = f"a folder link to {target}, which holds the link itself (a loop)"
        else:
            return True
        self.skip(str(folder), f"refused: {reason}")
        return False
