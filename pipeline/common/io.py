"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target and fsync its folder.

A crash mid-write leaves the previous file (or nothing) in place, never a half-written one, so a
failed run cannot damage the last good output; after a power cut the rename itself is on disk too.
:func:`replaced_as_set` extends that to every output of a stage: a failed stage leaves its previous outputs
whole, never half old and half new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = [
    "atomic_path",
    "atomic_dir",
    "replaced_as_set",
    "write_bytes",
    "write_text",
    "write_json",
    "read_json",
    "sha256_file",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """A write error that names no file (a full disk says only "No space left on device") names ``target``."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(target)) from err
        raise


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    Args:
        target: final file path.
        suffix: suffix for the temporary file (some writers pick the format from it).
    Returns:
        A context manager yielding the temporary path to write to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        with _naming(target):
            yield tmp_path
            _fsync(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent)  # the rename lives in the folder's entries: sync them too
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder's: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (``root`` included), deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` whole.

    The old directory is moved aside before the swap and removed only after the new one is in place.

    Args:
        target: final directory path.
        durable: fsync every file and folder written before the swap, and the parent folder after it, so
            that a power cut never leaves a renamed but empty or partial folder (the model registry's
            versions); off for stage outputs, which a rerun rebuilds.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        with _naming(target):
            yield tmp
            if durable:
                _fsync_tree(tmp)
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        if durable:
            _fsync(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_PREVIOUS = ".tlops-previous"  # sibling folder holding the outputs of the last whole run while a stage runs


def _backup(path: Path) -> Path:
    return path.parent / _PREVIOUS / path.name


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling link is an output too


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _present(path):
        path.unlink()


def _journal(paths: list[Path]) -> Path:
    return _backup(paths[0]).with_name(paths[0].name + ".journal.json")


def _settle(paths: list[Path]) -> None:
    """Finish what the journal says: the new set is partial (``set_aside``: put the last whole set back)
    or whole (``committed``: drop the old one). Run after every stage, and before the next one in case
    a stage was killed in between."""
    journal = _journal(paths)
    if not journal.exists():
        return
    state = json.loads(journal.read_text(encoding="utf-8"))
    for name in state["moved"]:
        path = Path(name)
        if _present(_backup(path)):
            if state["state"] == "set_aside":
                _remove(path)
                os.replace(_backup(path), path)
            else:
                _remove(_backup(path))
    if state["state"] == "set_aside":  # the new outputs of a killed run are partial
        for path in map(Path, state["paths"]):
            if str(path) not in state["moved"]:
                _remove(path)
    journal.unlink()
    for folder in {_backup(p).parent for p in map(Path, state["paths"])}:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


@contextlib.contextmanager
def replaced_as_set(paths: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Let a stage write its outputs in place, but replace them as one set.

    The existing outputs are moved aside (a rename into a ``.tlops-previous`` sibling folder, recorded in
    a journal) before the body runs. If the body raises, its partial outputs are removed and the old
    ones put back, unless the error says its outputs were written whole (``outputs_written``, e.g.
    :class:`pipeline.common.errors.GateFailed`); on success the old ones are deleted. A run killed in
    between leaves the journal, and the next call restores the last whole set before it starts.

    Args:
        paths: the stage's output files and folders (persistent outputs excluded by the caller).
    """
    paths = [Path(p).absolute() for p in dict.fromkeys(map(str, paths))]
    if not paths:
        yield
        return
    _settle(paths)
    journal = _journal(paths)
    journal.parent.mkdir(parents=True, exist_ok=True)
    moved = [p for p in paths if _present(p)]
    record = {"state": "set_aside", "paths": [str(p) for p in paths], "moved": [str(p) for p in moved]}
    write_json(journal, record)
    for path in moved:
        _backup(path).parent.mkdir(parents=True, exist_ok=True)
        _remove(_backup(path))
        os.replace(path, _backup(path))
    whole = False
    try:
        yield
        whole = True
    except BaseException as err:
        whole = getattr(err, "outputs_written", False)  # e.g. a failed gate's report: the new set is whole
        raise
    finally:
        if whole:
            write_json(journal, {**record, "state": "committed"})
        _settle(paths)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the path."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``target`` atomically and return the path."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found (has the stage that writes it run?)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in summaries; make them JSON without importing numpy here.
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
