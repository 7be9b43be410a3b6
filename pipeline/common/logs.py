"""Structured logging and progress bars shared by every stage."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

__all__ = ["get_logger", "setup_logging", "progress"]

T = TypeVar("T")
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at emit time (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    """Configure the ``tlops`` logger once: timestamped lines on stderr."""
    root = logging.getLogger("tlops")
    root.setLevel(level.upper())
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):  # others' handlers (pytest's) don't count
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a module, under the ``tlops`` hierarchy."""
    return logging.getLogger("tlops." + name.removeprefix("pipeline."))


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap a long loop in a progress bar on stderr (plain periodic lines when not a terminal).

    Args:
        items: the iterable to walk.
        desc: what the loop does, shown before the bar.
        total: number of items when ``items`` has no length.
        unit: unit name shown in the rate.
    Returns:
        An iterator over ``items``.
    """
    disable = os.environ.get("TLOPS_NO_PROGRESS") == "1"
    # In CI logs a redrawn bar is noise: update every few seconds instead.
    mininterval = 0.1 if sys.stderr.isatty() else 5.0
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=disable,
                     mininterval=mininterval, dynamic_ncols=True, file=sys.stderr))
