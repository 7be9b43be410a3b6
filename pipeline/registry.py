"""The model registry: every evaluated model version with its card, and one champion pointer.

Layout (a folder by default, or an ``s3://bucket/prefix``):

    <registry>/versions/<version>/...      the model directory as the fine-tune stage wrote it
                                           (state dict + model card), plus decision.json and
                                           data/ (its test images and the hashes it trained on)
    <registry>/champion.json               {"version": ..., "test_accuracy": ..., "promoted_at": ...}
    <registry>/aliases/<name>.json         other aliases a team names (challenger, staging, ...), same form
    <registry>/history/<time>-<id>.json    one object per alias move (who, when, why, from what): append-only,
                                           each written once under a new name, never rewritten

Promotion is atomic: a version is written in full before anything points at it, and the champion
pointer is replaced in one step (a rename on disk, a single PUT on S3). A failed promotion leaves
the previous champion untouched.

Promotion is serialised: the champion pointer is replaced only if it is still the one the promoter
compared against (compare-and-swap: under a file lock on a folder, a conditional PUT with If-Match /
If-None-Match on S3); otherwise :class:`ChampionChanged` tells it to compare again. Registering is
idempotent: the same model under the same version (a rerun after a crash) is accepted, a different one
refused. Every alias move (the champion's included) goes through the same compare-and-swap and then
appends its event to the history.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from pipeline.common.io import atomic_dir, read_json, write_json
from pipeline.common.s3 import S3Store
from pipeline.common.run_names import check_run_name, check_run_tag

__all__ = ["DATA", "CHAMPION", "Registry", "ChampionChanged", "open_registry", "open_store", "run_candidate", "actor",
           "check_alias"]
DATA = "data"  # a version's data record (pipeline/promotion/evalset.py)
CHAMPION = "champion"  # the alias whose model serves (champion.json)
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_LOCK_WAIT_S = 300.0  # a promoter holds the folder lock for one read and one rename: milliseconds


class ChampionChanged(RuntimeError):
    """Another run replaced the champion after this one compared against it: compare again."""


class _Store(Protocol):
    """Where a registry's files live: a folder (:class:`_FolderStore`) or S3 (:class:`pipeline.common.s3.S3Store`).
    ``put_json_if`` writes only if the object is still as the token from ``get_json_token`` says (else False)."""

    def put_dir(self, rel: str, local: Path) -> None: ...
    def put_json(self, rel: str, obj: Any) -> None: ...
    def get_json(self, rel: str) -> Any | None: ...
    def get_json_token(self, rel: str) -> tuple[Any | None, str | None]: ...
    def put_json_if(self, rel: str, obj: Any, token: str | None) -> bool: ...
    def fetch_dir(self, rel: str, dest: Path) -> Path: ...
    def list_dirs(self, rel: str, whole: bool = True) -> list[str]: ...
    def list_files(self, rel: str) -> list[str]: ...
    def has_dir(self, rel: str) -> bool: ...
    def put_json_new(self, rel: str, obj: Any) -> None: ...


class _FolderStore:
    def __init__(self, root: Path):
        self.root = root

    def put_dir(self, rel: str, local: Path) -> None:
        with atomic_dir(self.root / rel, durable=True) as tmp:  # a champion never points at unsynced files
            shutil.copytree(local, tmp, dirs_exist_ok=True)

    def put_json(self, rel: str, obj: Any) -> None:
        write_json(self.root / rel, obj)

    def get_json(self, rel: str) -> Any | None:
        path = self.root / rel
        return read_json(path) if path.is_file() else None

    def get_json_token(self, rel: str) -> tuple[Any | None, str | None]:
        path = self.root / rel
        if not path.is_file():
            return None, None
        data = path.read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()

    def put_json_if(self, rel: str, obj: Any, token: str | None) -> bool:
        with self._locked():
            if self.get_json_token(rel)[1] != token:
                return False
            write_json(self.root / rel, obj)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the registry folder (flock: released by the kernel if the holder dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            deadline = time.monotonic() + _LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.root}/.lock: held by another promoter "
                                           f"for {_LOCK_WAIT_S:g} s") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def fetch_dir(self, rel: str, dest: Path) -> Path:
        return self.root / rel  # already local: nothing to copy

    def list_dirs(self, rel: str, whole: bool = True) -> list[str]:  # folders are renamed into place: all whole
        base = self.root / rel
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def has_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def list_files(self, rel: str) -> list[str]:
        base = self.root / rel
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_file() and not p.name.startswith("."))

    def put_json_new(self, rel: str, obj: Any) -> None:
        """Write ``rel`` whole, only if it does not exist (a link of a synced temp file: exclusive and atomic)."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=".new-", delete=False) as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(fh.name, target)
        finally:
            os.unlink(fh.name)


class Registry:
    """Versions plus a champion pointer over a folder or S3 store."""

    def __init__(self, store: _Store, location: str):
        self.store, self.location = store, location

    def champion(self) -> dict[str, Any] | None:
        """The champion pointer, or None when nothing was promoted yet; its version and run tag are
        checked, since they go into keys, paths and git commands."""
        return self.champion_and_token()[0]

    def champion_and_token(self) -> tuple[dict[str, Any] | None, str | None]:
        """The champion (as :meth:`champion`) and a token of that state for :meth:`set_champion`."""
        return self.alias_and_token(CHAMPION)

    def alias_and_token(self, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """The record an alias points with (None: unset) and a token of that state for :meth:`set_alias`;
        its version and run tag are checked, since they go into keys, paths and git commands."""
        record, token = self.store.get_json_token(_alias_key(alias))
        if record is not None:
            where = f"{self.location}/{_alias_key(alias)}"
            check_run_name(record.get("version"), where)
            if record.get("run_tag") is not None:
                check_run_tag(record["run_tag"], where)
        return record, token

    def aliases(self) -> dict[str, str]:
        """Alias -> the version it points at (the champion first)."""
        found = {}
        for alias in [CHAMPION, *(name.removesuffix(".json") for name in self.store.list_files("aliases")
                                  if name.endswith(".json") and _ALIAS.match(name.removesuffix(".json")))]:
            record = self.alias_and_token(alias)[0]
            if record is not None:
                found[alias] = record["version"]
        return found

    def history(self) -> list[dict[str, Any]]:
        """Every alias move, oldest first (per alias, in move order)."""
        events = [event for name in self.store.list_files("history") if name.endswith(".json")
                  if (event := self.store.get_json(f"history/{name}")) is not None]
        return sorted(events, key=lambda e: (str(e.get("at")), int(e.get("move", 0))))

    def versions(self) -> list[str]:
        """Every registered version, oldest first (version names start with a UTC timestamp)."""
        return [v for v in self.store.list_dirs("versions") if _is_run_name(v)]

    def is_registered(self, version: str) -> bool:
        """Whether ``version`` is stored whole (one lookup, not a listing of every version)."""
        return self.store.has_dir(f"versions/{self._checked(version)}")

    def card(self, version: str) -> dict[str, Any] | None:
        """The decision record stored with a version."""
        return self.store.get_json(f"versions/{self._checked(version)}/decision.json")

    def register(self, version: str, model_dir: Path, decision: dict[str, Any], extras: Sequence[Path] = (),
                 data: Path | None = None) -> None:
        """Store a model directory and its decision (plus ``extras``: files such as the model card, and ``data``:
        the version's data record, pipeline/promotion/evalset.py, stored as ``data/``) as a version, whole or
        not at all.

        A version already holding the same model (its card's ``state_dict_sha256``: a rerun after a
        crash) only gets the new decision; a different model under that name is refused.
        """
        if self.is_registered(version):
            stored = self.store.get_json(f"versions/{version}/card.json") or {}
            local = read_json(model_dir / "card.json") if (model_dir / "card.json").is_file() else {}
            if not stored.get("state_dict_sha256") or stored.get("state_dict_sha256") != local.get("state_dict_sha256"):
                raise FileExistsError(f"{self.location}: version {version!r} is already registered with another model")
            self.store.put_json(f"versions/{version}/decision.json", decision)
            return
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / version
            shutil.copytree(model_dir, staged)
            for extra in extras:
                shutil.copy2(extra, staged / Path(extra).name)
            if data is not None:
                shutil.copytree(data, staged / DATA)
            write_json(staged / "decision.json", decision)
            self.store.put_dir(f"versions/{version}", staged)

    def set_champion(self, version: str, record: dict[str, Any], token: str | None, action: str = "promote",
                     reason: str = "", forced: bool = False) -> dict[str, Any]:
        """:meth:`set_alias` for the champion."""
        return self.set_alias(CHAMPION, version, record, token, action=action, reason=reason, forced=forced)

    def set_alias(self, alias: str, version: str, record: dict[str, Any], token: str | None, action: str,
                  reason: str = "", forced: bool = False) -> dict[str, Any]:
        """Point an alias at a registered version (one atomic write), if it still points where it did when
        ``token`` (from :meth:`alias_and_token`) was read; then append the move to the history.

        Returns:
            The history event: at, action, alias, version, move, previous, reason, forced, by (user, host, flow
            run).
        Raises:
            ChampionChanged: the alias moved meanwhile; read it again (and compare again) before retrying.
            ValueError: an alias name off the allowed form, or a version that is not registered.
        """
        check_alias(alias)
        if not self.is_registered(version):
            raise ValueError(f"{self.location}: version {version!r} is not registered (tlops registry list)")
        previous = self.alias_and_token(alias)[0]  # (if it moved since ``token``, the swap below fails)
        now = time.gmtime()
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", now)
        # the alias's move number: under the compare-and-swap, its moves are numbered 1, 2, ... with no gap or
        # repeat, and each event's "previous" is the version of the move numbered one less
        move = int((previous or {}).get("move", 0)) + 1
        event = {"at": at, "action": action, "alias": alias, "version": version, "move": move,
                 "previous": previous["version"] if previous else None, "reason": reason, "forced": forced,
                 "by": actor()}
        if not self.store.put_json_if(_alias_key(alias), {**record, "version": version, "move": move,
                                                          "previous": event["previous"], "set_by": event["by"],
                                                          "set_at": at, "action": action}, token):
            raise ChampionChanged(f"{self.location}/{_alias_key(alias)} changed since it was read")
        # after the swap: a crash here loses the event, never a pointer (the pointer holds who and when too)
        self.store.put_json_new(f"history/{time.strftime('%Y%m%dT%H%M%S', now)}-{time.time_ns():d}-"
                                f"{uuid.uuid4().hex[:8]}.json", event)
        return event

    def model_dir(self, version: str, scratch: Path) -> Path:
        """A local directory holding the version's files (downloaded into ``scratch`` for S3)."""
        return self.store.fetch_dir(f"versions/{self._checked(version)}", scratch / version)

    def _checked(self, version: str) -> str:
        return check_run_name(version, f"{self.location}: version")


def run_candidate(evaluation_path: Path, finetuned: Path, baseline: Path) -> tuple[dict[str, Any], Path]:
    """A run's candidate for the registry: the model its evaluation recommends (the fine-tuned one unless the
    scratch baseline beat it). Returns (the evaluation's metrics, that model's directory)."""
    evaluation = read_json(evaluation_path)
    if evaluation.get("verdict") is None or evaluation.get("recommended_model") not in ("finetuned", "scratch"):
        raise ValueError(f"{evaluation_path}: no 'verdict' / 'recommended_model' (re-run the evaluate stage)")
    return evaluation, finetuned if evaluation["recommended_model"] == "finetuned" else baseline


def check_alias(alias: Any) -> str:
    """``alias`` when it is an alias name (lowercase letters, digits, ``_`` or ``-``, a letter first, at most 40);
    else a ValueError naming it."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise ValueError(f"alias {alias!r}: an alias is lowercase letters, digits, '_' or '-', starting with a letter "
                         "(at most 40)")
    return alias


def _alias_key(alias: str) -> str:
    return "champion.json" if check_alias(alias) == CHAMPION else f"aliases/{alias}.json"


def actor() -> dict[str, str | None]:
    """Who moves an alias: the user (``TLOPS_USER``, else the login), the host, and the Prefect flow run the
    move happens in (None outside one)."""
    try:
        user = os.environ.get("TLOPS_USER") or getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = f"uid {os.getuid()}"
    return {"user": user, "host": socket.gethostname(), "flow_run": os.environ.get("PREFECT__FLOW_RUN_ID")}


def _is_run_name(name: str) -> bool:
    try:
        check_run_name(name, "")
    except ValueError:
        return False
    return True


def open_store(location: str, base: Path) -> tuple[_Store, str]:
    """A store of whole folders at a folder (relative to ``base``) or an ``s3://`` URI, and where it is in words:
    the registry's, and the served images' sampled batches (pipeline/serving/samples.py)."""
    if location.startswith("s3://"):
        return S3Store(location), location
    root = Path(location) if Path(location).is_absolute() else base / location
    return _FolderStore(root), str(root)


def open_registry(location: str, base: Path) -> Registry:
    """Open the registry at a folder (relative to ``base``) or an ``s3://`` URI."""
    return Registry(*open_store(location, base))
