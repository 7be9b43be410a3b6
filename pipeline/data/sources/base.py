"""What every source yields: records (path, label, bytes) streamed one at a time, plus a skip list."""

from __future__ import annotations

import collections
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.common.logs import get_logger

__all__ = ["Record", "Skipped", "Source", "ordered_parallel"]
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


class Source:
    """Base of the sources: ``records()`` streams Records; ``skipped`` and ``labels`` fill as it goes.

    ``labels`` holds the classes the source declares (e.g. its class folders), so that a class whose
    every file was skipped is an error rather than a class that silently vanishes.
    """

    def __init__(self, description: str):
        self.description = description
        self.skipped: list[Skipped] = []
        self.labels: set[str] = set()

    def records(self) -> Iterator[Record]:
        """Stream the source's records (subclasses implement this)."""
        raise NotImplementedError

    def skip(self, path: str, reason: str) -> None:
        """Record one skipped item and log it."""
        log.warning("skipped %s: %s", path, reason)
        self.skipped.append(Skipped(path, reason))


def ordered_parallel(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R | None, Exception | None]]:
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
