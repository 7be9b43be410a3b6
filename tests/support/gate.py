"""A passed validation gate, for stage tests that build their dataset without running `tlops validate`
(the gate itself, quarantine included, is tested in test_stage_validate.py)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["passed_gate"]


def passed_gate(folder: Path) -> Path:
    """Write validate's metrics.json for a dataset that passed with nothing quarantined; returns its path."""
    path = folder / "validate-metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"passed": True, "failed_critical": [], "quarantine": []}))
    return path
