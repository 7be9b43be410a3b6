"""Shared output helpers for benchmarks: JSON lines on stdout plus bench/results/<name>.json."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from pipeline.common.io import write_json

__all__ = ["BenchReport"]
RESULTS = Path(__file__).resolve().parent / "results"


class BenchReport:
    """Collects the figures of one benchmark; ``emit`` prints each, ``save`` writes them all."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[dict[str, Any]] = []
        self.started = time.time()

    def emit(self, **figures: Any) -> None:
        """Print one JSON line of figures (and keep it for :meth:`save`)."""
        row = {"bench": self.name, **figures}
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)

    def save(self) -> Path:
        """Write bench/results/<name>.json with the rows and the machine they were measured on."""
        import torch

        machine = {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        path = write_json(RESULTS / f"{self.name}.json",
                          {"bench": self.name, "machine": machine, "seconds": round(time.time() - self.started, 2),
                           "rows": self.rows})
        print(f"# wrote {path}", flush=True)
        return path
