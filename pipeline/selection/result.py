"""Reading what ``tlops select`` wrote: the chosen model, its probe score and its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["selected_model"]


def selected_model(selection: dict[str, Any], path: Path) -> tuple[str, float | None, dict[str, Any]]:
    """The chosen model of a selection.json: (name, its linear-probe accuracy or None, its weights).

    Args:
        selection: the parsed selection.json.
        path: where it was read from (for error messages).
    Returns:
        (model name, probe accuracy, {"uri", "sha256", ...}).
    """
    name = selection.get("selected")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: no 'selected' model name (re-run `tlops select`)")
    row = next((r for r in selection.get("ranking", []) if r.get("name") == name), {})
    probe = row.get("scores", {}).get("linear_probe", {}).get("value")
    return name, probe, selection.get("weights") or row.get("weights") or {}
