"""Reading what ``tlops select`` wrote: the chosen model, its probe score and its weights, and the architecture
record the scratch stages depend on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["selected_model", "architecture_record", "read_architecture"]


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


def architecture_record(name: str) -> dict[str, str]:
    """What select writes to architecture.json: the chosen architecture's name alone.

    The scratch side of the verdict (the baseline stage: the baseline and the curve's runs) reads this file, not
    selection.json or the freeze plan, so that a change that leaves the architecture as it was (a select, freeze
    or finetune param, re-measured latencies) never retrains a scratch model.
    """
    return {"model": name}


def read_architecture(path: Path) -> str:
    """The architecture name in an architecture.json written by :func:`architecture_record`."""
    try:
        name = json.loads(Path(path).read_text()).get("model")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (run `tlops select` first)") from None
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not an architecture record ({err}); re-run `tlops select`") from None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: no 'model' name (re-run `tlops select`)")
    return name
