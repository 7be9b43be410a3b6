"""What every source yields: records (path, label, bytes) streamed one at a time, plus a skip list."""

from __future__ import annotations

import collections
import errno
import os
import re
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from pipeline.common.errors import TransientError
from pipeline.common.logs import get_logger

__all__ = ["Record", "Skipped", "Source", "Refused", "Confinement", "ordered_parallel"]
log = get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Record:
    """One labelled image as the source holds it: where it came from, its class, its encoded bytes."""

    source_path: str
    label: str
    data: bytes


@dataclass(frozen=True)
class Skipped:
    """Something a source or the packer passed over, and why (listed in the ingest report)."""

    path: str
    reason: str

    @property
    def kind(self) -> str:
        """The reason without its details ("duplicate", "unreadable", "not an image", ...), for counting."""
        return re.split(r" of |:| \(", self.reason)[0]


class Refused(ValueError):
    """A file ingest will not read: outside the declared roots, not a regular file, or over the size cap."""


@dataclass(frozen=True)
class Confinement:
    """Where local reads may go and how much they may read: the source's own folder plus
    ``source.allowed_roots``, regular files only, at most ``max_bytes`` each."""

    roots: tuple[Path, ...]
    max_bytes: int

    @classmethod
    def of(cls, root: Path, allowed: Sequence[str], max_mb: float) -> "Confinement":
        """The confinement of a source rooted at ``root`` (its folder, or its manifest's folder)."""
        roots = (root.resolve(), *(Path(a).expanduser().resolve() for a in allowed))
        return cls(roots, int(max_mb * 2**20))

    def admits(self, real: Path) -> bool:
        """True when the resolved path ``real`` is inside one of the roots."""
        return any(real.is_relative_to(root) for root in self.roots)

    def read(self, path: Path) -> bytes:
        """Read a local file after checking where it really is (symlinks resolved), what it is and its size.

        What is checked is what is read: the resolved path is opened one folder at a time without following
        links (``O_NOFOLLOW``), so a folder or the file swapped for a link after the check is refused instead
        of followed; the type and size are those of the opened file (``fstat``), and a FIFO is opened
        non-blocking, so one swapped in never hangs the read.

        Raises:
            Refused: outside every root, not a regular file (FIFO, device, socket), over the cap, or changed
                into a link between the check and the open.
            OSError: the file could not be read.
        """
        real = path.resolve()
        if not self.admits(real):
            where = f" (it resolves to {real})" if real != path.absolute() else ""
            raise Refused(f"outside the source's folder{where}; add its folder to source.allowed_roots to read it")
        with os.fdopen(_open_resolved(real), "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise Refused(_NOT_REGULAR)
            self.check_size(info.st_size)
            data = fh.read(self.max_bytes + 1)  # at most one byte past the cap: a file growing meanwhile stays capped
        self.check_size(len(data))
        return data

    def check_size(self, size: int) -> None:
        """Refuse ``size`` bytes above the cap."""
        if size > self.max_bytes:
            raise Refused(f"{size} bytes, over source.max_file_mb ({self.max_bytes / 2**20:g} MiB)")


_NOT_REGULAR = "not a regular file (a FIFO, device or socket); only regular files are read"


def _open_resolved(real: Path) -> int:
    """Open the resolved path ``real`` for reading, following no link on the way: each folder with
    ``O_NOFOLLOW`` relative to the one before, then the file itself. Anything but a regular file is refused
    from its ``lstat``, never opened (opening a FIFO blocks, some devices act); the caller checks the opened
    file again, in case it was swapped after the lstat.

    Raises:
        Refused: a folder or the file is (now) a link, or the file is not a regular file.
        OSError: it could not be opened (gone, no permission).
    """
    nofollow = os.O_RDONLY | os.O_NOFOLLOW
    folder = os.open(real.anchor, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in real.parts[1:-1]:
            inner = os.open(part, nofollow | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        mode = os.stat(real.name, dir_fd=folder, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a link")
        if not stat.S_ISREG(mode):
            raise Refused(_NOT_REGULAR)
        # non-blocking: a FIFO swapped in after the lstat opens at once, and the caller's fstat refuses it
        return os.open(real.name, nofollow | os.O_NONBLOCK, dir_fd=folder)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(f"{real} or one of its folders was replaced by a link after it was checked; "
                          "links are followed only when checked") from None
        raise
    finally:
        os.close(folder)


class Source:
    """Base of the sources: ``records()`` streams Records; ``skipped`` and ``labels`` fill as it goes.

    ``labels`` holds the classes the source declares (e.g. its class folders), so that a class whose
    every file was skipped is an error rather than a class that silently vanishes.
    """

    def __init__(self, description: str, unlabelled: bool = False):
        self.description = description
        self.skipped: list[Skipped] = []
        self.labels: set[str] = set()
        # images to predict on: files outside class folders (or table rows without a label) are records
        # with label "" instead of being skipped
        self.unlabelled = unlabelled

    def records(self) -> Iterator[Record]:
        """Stream the source's records (subclasses implement this)."""
        raise NotImplementedError

    def skip(self, path: str, reason: str) -> None:
        """Record one skipped item and log it."""
        log.warning("skipped %s: %s", path, reason)
        self.skipped.append(Skipped(path, reason))

    def skip_failed_read(self, path: str, error: Exception) -> None:
        """Record a read that failed: ``refused: ...`` for a :class:`Refused` file, else ``unreadable: ...``.

        Raises:
            TransientError: ``error`` is one (storage down, throttled after retries): the whole stage
                fails as transient, so the flow retries it, instead of training on part of the data.
        """
        if isinstance(error, TransientError):
            raise error
        self.skip(path, f"refused: {error}" if isinstance(error, Refused) else f"unreadable: {error}")


def ordered_parallel(fn: Callable[[T], R], items: Iterable[T],
                     workers: int) -> Iterator[tuple[T, R | None, Exception | None]]:
    """Run ``fn`` over ``items`` on threads, yielding (item, result, error) in input order.

    At most ``2 * workers`` calls are in flight, so memory stays flat however many items there are
    (``Executor.map`` would submit them all at once).

    Args:
        fn: the call (I/O bound: file reads, S3 downloads).
        items: the inputs, consumed lazily.
        workers: threads.
    Returns:
        An iterator of (item, result or None, exception or None).
    """
    window: collections.deque[tuple[T, Future]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 2 * workers:
                yield _settle(*window.popleft())
        while window:
            yield _settle(*window.popleft())


def _settle(item: T, future: Future) -> tuple[T, R | None, Exception | None]:
    try:
        return item, future.result(), None
    except Exception as err:  # noqa: BLE001 - handed to the caller, who names the item in its report
        return item, None, err
