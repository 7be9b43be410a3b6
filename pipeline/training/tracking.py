"""Per-epoch metrics in the DVC ecosystem: each training stage's history logged with DVCLive.

DVCLive writes ``<dir>/metrics.json`` (the last epoch's figures) and ``<dir>/plots/metrics/<name>.tsv``
(one row per epoch); dvc.yaml declares them as the stage's metrics and plots, so ``dvc exp show
--all-tags``, ``dvc metrics diff run-A run-B``, ``dvc plots diff run-A run-B`` and the DVC VS Code
extension show every run's curves. The folder is rewritten from the whole history after each epoch, so a
stage killed mid-epoch and resumed from its checkpoint ends with exactly the resumed history (no epoch
logged twice), and only the main process of a multi-GPU run writes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["EPOCH_METRICS", "LiveHistory"]
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "head_lr", "images_per_s")


class LiveHistory:
    """An ``on_epoch`` hook (pipeline/training/loop.py) that mirrors the history into a DVCLive folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def __call__(self, history: list[dict[str, Any]]) -> None:
        from dvclive import Live

        # inside `dvc repro` DVCLive notes that it will not make an experiment: the stage is versioned by the run
        logging.getLogger("dvclive").setLevel(logging.ERROR)
        with Live(str(self.folder), resume=False, report=None, save_dvc_exp=False, dvcyaml=None) as live:
            for row in history:
                for name in EPOCH_METRICS:
                    if row.get(name) is not None:
                        live.log_metric(name, float(row[name]))
                live.next_step()
