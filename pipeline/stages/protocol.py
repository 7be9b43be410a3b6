"""The stage protocol of every stage after ``validate``: take the gate's outcome, stop unless it passed, and read
the dataset only through the value the gate check returns.

A stage declares ``validation: Path | None = validation_field()`` in its ``Args`` and calls
``dataset = use_validated(args.dataset, args.validation)`` first; from then on it passes ``dataset`` (a
:class:`~pipeline.data.shards.GatedDataset`) wherever the dataset directory goes, so the images the gate
quarantined are never decoded. Nothing is kept between calls: two datasets read in one process each leave out
only what the value given for them carries. A helper of the stage modules, not a stage (not in ``STAGES``).
"""

from __future__ import annotations

import os
from dataclasses import field
from pathlib import Path
from typing import Any

from pipeline.common.io import read_json
from pipeline.common.logs import get_logger
from pipeline.data.shards import GatedDataset

__all__ = ["validation_field", "use_validated"]
log = get_logger(__name__)


def validation_field() -> Any:
    """The ``validation`` argument of every stage after validate (see use_validated)."""
    return field(default=None, metadata={"help": "validate's metrics.json: stop unless the gate passed, and leave "
                                                 "out the images it quarantined (None in code: no gate)"})


def use_validated(dataset: str | os.PathLike, validation: str | os.PathLike | None) -> GatedDataset:
    """Stop unless the validation gate passed; return the dataset as the gate passed it.

    Every stage after ``validate`` calls this first, so no training starts on data that failed the
    gate; reading through the returned value, images quarantined by ``validate.corrupt_policy: quarantine``
    are never decoded. Torchrun ranks each run the stage (same arguments), so each calls this itself.

    Args:
        dataset: the dataset directory the gate validated.
        validation: the validate stage's metrics.json; None uses the dataset as ingested (no gate).
    Returns:
        The dataset directory with the ids to leave out (none without a gate).
    Raises:
        ValueError: the gate failed (its failed checks are named).
    """
    if validation is None:
        return GatedDataset(Path(dataset))
    gate = read_json(validation)
    if not gate.get("passed"):
        raise ValueError(f"{validation}: the validation gate failed ({', '.join(gate.get('failed_critical', []))}); "
                         f"fix the data and re-run `tlops validate` before this stage")
    quarantined = frozenset(entry["id"] for entry in gate.get("quarantine", []))
    if quarantined:
        log.info("%s: leaving out %d images quarantined by the validation gate (%s)", dataset, len(quarantined),
                 validation)
    return GatedDataset(Path(dataset), quarantined)
