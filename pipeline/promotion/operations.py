"""Registry operations people run by hand (`tlops registry ...`): list, show, history, promote, rollback.

- ``promote VERSION`` points the champion at a registered version through the same blessing as the
  promote stage (pipeline/promotion/decide.py), on the version's registered test images and the
  champion's; the pixel reference needs the version's training images, which the registry does not keep,
  so the majority class is the reference here (the version's own run checked the pixel one). ``--force``
  skips the blessing and needs a reason; the history records both. Any other alias (``challenger``,
  ``staging``, a name the team picks) is a label: it moves without a blessing.
- ``rollback`` points the champion back at the version it replaced (from the history), or ``--to`` a
  version that was champion before; a version never crowned goes through ``promote`` instead.

Every move is the registry's compare-and-swap plus a history event (who, when, why, from what).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.common.errors import TransientError
from pipeline.config import Params
from pipeline.registry import CHAMPION, DATA, ChampionChanged, Registry, check_alias

if TYPE_CHECKING:
    import torch

__all__ = ["Refused", "version_rows", "show_version", "promote_version", "rollback"]
_ATTEMPTS = 5


class Refused(RuntimeError):
    """The blessing refused a manual promotion (the message is its decision and reason)."""


def version_rows(registry: Registry) -> list[dict[str, Any]]:
    """One row per registered version, oldest first: its decision, accuracy and the aliases on it."""
    on = {}
    for alias, version in registry.aliases().items():
        on.setdefault(version, []).append(alias)
    rows = []
    for version in registry.versions():
        decision = registry.card(version) or {}
        rows.append({"version": version, "aliases": ", ".join(on.get(version, [])),
                     "decision": decision.get("decision", "?"), "test_accuracy": decision.get("test_accuracy"),
                     "verdict": decision.get("verdict", "?")})
    return rows


def show_version(registry: Registry, version: str) -> dict[str, Any]:
    """A version's decision record, the aliases on it and its history events."""
    if not registry.is_registered(version):
        raise ValueError(f"{registry.location}: version {version!r} is not registered (tlops registry list)")
    return {"version": version, "aliases": [a for a, v in registry.aliases().items() if v == version],
            "decision": registry.card(version),
            "history": [e for e in registry.history() if version in (e.get("version"), e.get("previous"))]}


def promote_version(registry: Registry, version: str, params: Params, device: torch.device, alias: str = CHAMPION,
                    force: bool = False, reason: str = "") -> dict[str, Any]:
    """Point ``alias`` at ``version``; the champion only through the blessing unless ``force`` (with a reason).

    Returns:
        The history event, with the blessing's decision under ``decision`` when one was made.
    Raises:
        Refused: the blessing refused it (the champion stays).
        ValueError: an unknown version, a bad alias name, ``force`` without a reason, a version without a
            data record to bless it on.
    """
    check_alias(alias)
    if not registry.is_registered(version):
        raise ValueError(f"{registry.location}: version {version!r} is not registered (tlops registry list)")
    if force and not reason.strip():
        raise ValueError("--force skips the blessing: give the history a --reason")
    blessed = alias == CHAMPION and not force
    for _ in range(_ATTEMPTS):
        current, token = registry.alias_and_token(alias)
        if current is not None and current["version"] == version:
            raise ValueError(f"{registry.location}: {alias} already points at {version}")
        decision = _bless(registry, version, current, params, device) if blessed else None
        if decision is not None and not decision["promoted"]:
            raise Refused(f"{version}: {decision['decision']}: {decision['reason']}")
        card = registry.card(version) or {}
        record = {"test_accuracy": (decision or card).get("test_accuracy"), "run_tag": card.get("run_tag")}
        why = reason or (f"{decision['decision']}: {decision['reason']}" if decision else "")
        try:
            event = registry.set_alias(alias, version, record, token, action="force-promote" if force else "promote",
                                       reason=why, forced=force)
            return {**event, "decision": decision}
        except ChampionChanged:  # someone moved it meanwhile: bless against the new one
            continue
    raise TransientError(f"{registry.location}: {alias} kept changing during {_ATTEMPTS} attempts")


def _bless(registry: Registry, version: str, champion: dict | None, params: Params,
           device: torch.device) -> dict[str, Any]:
    # the blessing's imports (torch, the models: ~5 s) load here, when a version is blessed: list, show, history
    # and rollback answer in a fraction of a second
    from pipeline.models import LoadedModel
    from pipeline.promotion.decide import decide
    from pipeline.promotion.evalset import DataRecord

    with tempfile.TemporaryDirectory(prefix="tlops-promote-") as scratch:
        folder = registry.model_dir(version, Path(scratch))
        data = DataRecord.of_version(folder / DATA)
        if data is None:
            raise ValueError(f"{registry.location}: version {version} was registered without a data record (before "
                             "blessings), so it cannot be blessed; promote it with --force --reason")
        return decide(LoadedModel.load(folder, device), data, champion, registry, device, params, None)


def rollback(registry: Registry, to: str | None = None, reason: str = "") -> dict[str, Any]:
    """Point the champion back at the version it replaced, or at ``to`` (a version that was champion before).

    Raises:
        ValueError: no champion, no earlier champion in the history, ``to`` never champion.
        TransientError: the champion moved while rolling back (run it again to see where it is now).
    """
    current, token = registry.champion_and_token()
    if current is None:
        raise ValueError(f"{registry.location}: there is no champion to roll back")
    if to is None:  # the pointer says what it replaced (its history event may still be on its way)
        to = current.get("previous")
        if not to:
            raise ValueError(f"{registry.location}: no champion before {current['version']} is recorded; name one "
                             "with --to")
    elif to not in {e.get(key) for e in registry.history() if e.get("alias") == CHAMPION for key in ("version",
                                                                                                 "previous")}:
        raise ValueError(f"{registry.location}: {to} was never the champion; a new champion goes through "
                         f"`tlops registry promote {to}`")
    if to == current["version"]:
        raise ValueError(f"{registry.location}: {to} is already the champion")
    card = registry.card(to) or {}
    record = {"test_accuracy": card.get("test_accuracy"), "run_tag": card.get("run_tag")}
    try:
        return registry.set_champion(to, record, token, action="rollback",
                                     reason=reason or f"rolled back from {current['version']}")
    except ChampionChanged:
        raise TransientError(f"{registry.location}: the champion moved while rolling back; see `tlops registry "
                             "history` and run it again") from None
