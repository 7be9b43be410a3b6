"""Profile a whole dataset directory: every image of its shards, then the corrupt-file policy and the
leak columns. Kept apart from profile.py so the profiling workers it spawns import no torch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.common.logs import get_logger
from pipeline.config import ValidateParams
from pipeline.data.shards import iter_records, read_manifest
from pipeline.validation.checks import add_leak_columns
from pipeline.validation.profile import ProfileSettings, profile_records, resolve_workers

__all__ = ["profile_dataset"]
log = get_logger(__name__)

_LOGGED = 10  # bad images named in the log; the metrics list them all


def profile_dataset(dataset: Path, cfg: ValidateParams) -> pd.DataFrame:
    """Profile every image of a dataset directory and apply the corrupt-file policy.

    Args:
        dataset: the dataset directory.
        cfg: ``params.validate``.
    Returns:
        The profile with ``quarantined`` (undecodable images under the quarantine policy) and the
        leak/conflict partner columns.
    """
    total = len(read_manifest(dataset))
    settings = ProfileSettings(max_pixels=cfg.max_pixels, stats_max_side=cfg.stats_max_side,
                               chunk_size=cfg.chunk_size)
    workers = min(resolve_workers(cfg.workers), max(1, -(-total // cfg.chunk_size)))
    log.info("profiling %d images of %s with %d process(es)", total, dataset, workers)
    profile = profile_records(iter_records(dataset), total, settings, workers).to_pandas()
    profile["quarantined"] = ~profile["decode_ok"] & (cfg.corrupt_policy == "quarantine")
    bad = profile[~profile["decode_ok"]]
    for row in bad.head(_LOGGED).itertuples():
        log.warning("%s: %s (%s)", row.source_path, row.error, "quarantined" if row.quarantined else "not decodable")
    if len(bad) > _LOGGED:
        log.warning("... and %d more images that do not decode (all listed in the metrics)", len(bad) - _LOGGED)
    return add_leak_columns(profile, cfg.phash_max_distance)
