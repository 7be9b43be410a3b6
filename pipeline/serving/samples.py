"""What production saw, kept for the drift check: a sample of the served images, written as dated batches.

``serve.sample_rate`` of the images a service classified (never a refused one) are kept as they arrived (their
bytes, untouched; the same bytes once a batch) and written to ``serve.sample_store`` (a folder or
``s3://bucket/prefix``) as one batch folder per ``serve.sample_batch_images`` images or ``serve.sample_batch_s``
seconds, and when the service stops::

    <store>/<UTC time the batch closed>-<host>-<pid>-<n>/<id>.<format>   the images (id: sha256, 16 hex digits)
    <store>/<batch>/.batch.json                                         when, which model, its predictions

A batch appears whole or not at all (a folder renamed into place; on S3 a completion marker written last), so
the drift check never reads half of one. The drift-check flow reads every batch not yet checked
(:func:`unchecked_batches`: newest first up to ``serve.sample_check_max_images``, the older ones superseded) as
one current set (several through a table of their images, :func:`write_listing`), and marks each checked
(:func:`mark_checked`) once it has been; the files whose names start with a dot are skipped by every image
reader, so a batch reads as images only.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import os
import random
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.io import atomic_path, write_bytes, write_json
from pipeline.common.logs import get_logger
from pipeline.registry import open_store

__all__ = ["SampleWriter", "SampledBatch", "check_store", "unchecked_batches", "listing_path", "write_listing",
           "mark_checked", "BATCH_CARD", "CHECKED"]
log = get_logger(__name__)
BATCH_CARD = ".batch.json"
CHECKED = ".checked.json"
_NAME_TIME = "%Y%m%dT%H%M%SZ"  # a batch's name starts with the UTC time it closed
# a check looks back past checked batches this far: a batch stored late (a slow upload) or named by a host whose
# clock lags still sorts among the last ones checked; every older one was there when a check ran, and it marked each
_CHECKED_RUN = 48
_FUTURE_S = 300  # a batch named this far ahead of the checker's clock: a serving host's clock runs ahead


@dataclass
class _Pending:
    opened: float = field(default_factory=time.time)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, bytes)
    rows: list[dict[str, Any]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


class SampleWriter:
    """Keeps a random ``rate`` of the images it is offered and writes them as batches to ``location``."""

    def __init__(self, location: str, base: Path, rate: float, batch_images: int, batch_s: float,
                 seed: int | None = None):
        self.store, self.where = open_store(location, base)
        self.rate, self.batch_images, self.batch_s = rate, batch_images, batch_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._pending = _Pending()
        self.written: list[str] = []  # batch names, oldest first

    def offer(self, data: bytes, image_format: str | None, row: dict[str, Any]) -> bool:
        """Keep the image with probability ``rate`` (with its prediction ``row``); returns whether it was kept.
        The batch is written by :meth:`flush` (the service calls it once :meth:`ready`), never here: an answer
        does not wait for a store."""
        image_id = hashlib.sha256(data).hexdigest()[:16]
        name = f"{image_id}.{(image_format or 'img').lower()}"
        with self._lock:
            # an image sent again (a client's retry, a probe image) is kept once a batch: it would otherwise
            # weigh as many images in the drift check as it was sent
            if self._random.random() >= self.rate or name in self._pending.names:
                return False
            if not self._pending.images:
                self._pending.opened = time.time()  # a batch's age counts from its first image
            self._pending.names.add(name)
            self._pending.images.append((name, data))
            self._pending.rows.append({"file": name, "id": image_id, "served_at": _utc(time.time()), **row})
        return True

    def ready(self) -> bool:
        """Whether the open batch is to be written: full, or holding images for ``batch_s`` seconds."""
        with self._lock:
            images = len(self._pending.images)
            return images >= self.batch_images or (images > 0 and time.time() - self._pending.opened >= self.batch_s)

    def flush(self) -> str | None:
        """Write the open batch now (nothing when it is empty); returns its name."""
        with self._lock:
            pending, self._pending = self._pending, _Pending()
        if not pending.images:
            return None
        closed = time.time()
        # the writer's count too: two batches closed in one second (a full one, then the service stopping) keep
        # both their names
        name = (f"{time.strftime(_NAME_TIME, time.gmtime(closed))}-{socket.gethostname()}-{os.getpid()}"
                f"-{len(self.written) + 1:04d}")
        with tempfile.TemporaryDirectory(prefix="tlops-sample-") as tmp:
            folder = Path(tmp) / name
            for file_name, data in pending.images:
                write_bytes(folder / file_name, data)
            models = sorted({row["model_version"] for row in pending.rows})
            write_json(folder / BATCH_CARD, {"batch": name, "opened_at": _utc(pending.opened),
                                             "closed_at": _utc(closed), "images": len(pending.images),
                                             "model_versions": models, "rows": pending.rows})
            self.store.put_dir(name, folder)
        self.written.append(name)
        log.info("serve: %d sampled images written as batch %s/%s", len(pending.images), self.where, name)
        return name


@dataclass(frozen=True)
class SampledBatch:
    """A batch of the store: its name and where an image source reads it (a folder path or an s3:// URI)."""

    name: str
    location: str
    images: int
    files: tuple[str, ...] = ()  # its image files, as its card lists them

    def uri(self, file: str) -> str:
        """Where an image source reads one of its files."""
        return f"{self.location}/{file}" if "://" in self.location else str(Path(self.location) / file)


def check_store(location: str, base: Path) -> None:
    """Fail now, not at the first batch an hour later, when the sample store cannot be written (a folder) or
    reached with these credentials (S3).

    Raises:
        ValueError: naming ``serve.sample_store`` and why.
    """
    store, where = open_store(location, base)
    try:
        if where.startswith("s3://"):
            store.list_dirs("")
            return
        Path(where).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-"):
            pass
    except Exception as err:  # noqa: BLE001 (any failure here is the store's: say which and why)
        raise ValueError(f"serve.sample_store {location}: cannot write sampled batches to {where}: {err}") from err


def unchecked_batches(location: str, base: Path, max_images: int
                      ) -> tuple[list[SampledBatch], list[SampledBatch]]:
    """The whole batches of the store at ``location`` that no drift check has marked checked, oldest first: those
    the next check reads (the newest, then older ones while their images stay within ``max_images``) and the older
    ones beyond (superseded: a check that fell behind reads what production sees now, not last month).

    The look goes back from the newest batch and stops after :data:`_CHECKED_RUN` checked batches in a row: a store
    of a year of batches costs a check one listing and a few reads, not a read per batch."""
    store, where = open_store(location, base)
    unread: list[SampledBatch] = []
    checked_run = 0
    for name in sorted(store.list_dirs("", whole=False), reverse=True):
        if checked_run >= _CHECKED_RUN:
            break
        if not store.has_dir(name):  # still being uploaded: the next check reads it
            continue
        if store.get_json(f"{name}/{CHECKED}") is not None:
            checked_run += 1
            continue
        checked_run = 0
        closed = _closed_at(name)
        if closed is not None and closed > time.time() + _FUTURE_S:
            log.warning("sampled batch %s is dated %s, ahead of this machine's clock: the serving host's clock runs "
                        "ahead, and batches of other hosts sort behind its", name, _utc(closed))
        card = store.get_json(f"{name}/{BATCH_CARD}") or {}
        uri = store.uri(name) if where.startswith("s3://") else str(Path(where) / name)
        unread.insert(0, SampledBatch(name, uri, int(card.get("images", 0)),
                                      tuple(row["file"] for row in card.get("rows", []))))
    taken, images = 0, 0
    for batch in reversed(unread):
        if taken and images + batch.images > max_images:
            break
        taken, images = taken + 1, images + batch.images
    cut = len(unread) - taken
    return unread[cut:], unread[:cut]


def _closed_at(name: str) -> float | None:
    """The UTC time (epoch seconds) a batch closed, from its name; None for a folder not named as batches are."""
    try:
        return calendar.timegm(time.strptime(name[:16], _NAME_TIME))
    except ValueError:
        return None


def listing_path(batches: list[SampledBatch], run: str, worktree: Path) -> Path:
    """Where a check's table of several batches goes: the local store's own folder (its images are then inside the
    table's folder, which a table source may read without widening ``source.allowed_roots``), else the check's
    worktree (S3 URIs)."""
    if "://" in batches[0].location:
        return worktree / "served-batches.csv"
    return Path(batches[0].location).parent / f"served-batches-{run}.csv"  # a file: the batches are the folders


def write_listing(batches: list[SampledBatch], path: Path) -> int:
    """A table (one ``uri`` column) of the images of ``batches``: the one source a check reads several batches
    through (local images as paths relative to the table). Each image once (the same bytes sent in two batches
    would otherwise weigh twice, as within one batch); returns how many."""
    uris = {file: batch.uri(file) for batch in batches for file in batch.files}
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["uri"])
        writer.writerows([uri if "://" in uri else os.path.relpath(uri, path.parent)] for uri in uris.values())
    return len(uris)


def mark_checked(location: str, base: Path, batch: str, record: dict[str, Any]) -> None:
    """Record in the batch that a drift check has read it (``record``: which run, its verdict)."""
    store, _ = open_store(location, base)
    store.put_json(f"{batch}/{CHECKED}", {"checked_at": _utc(time.time()), **record})


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
