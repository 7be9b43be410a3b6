"""Promotion on real image folders: photo-crop class folders, their ingest, and the promote stage run with a
chosen run name (shared by the blessing, registry and promotion-loop tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.common.io import write_json
from pipeline.config import validate_params
from pipeline.stages import ingest, promote
from tests.support.gate import passed_gate
from tests.support.heads import SIZE
from tests.support.photos import photo_crops

__all__ = ["photo_class_folder", "ingest_folder", "run_promote"]


def photo_class_folder(root: Path, classes: dict[str, list[str]], per_photo: int, seed: int = 0) -> Path:
    """``root/<class>/<j>.png``: ``per_photo`` crops of each photo a class lists."""
    rng = np.random.default_rng(seed)
    for label, photos in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        crops = [crop for photo in photos for crop in photo_crops(photo, per_photo, rng, SIZE)]
        for j, data in enumerate(crops):
            (root / label / f"{j:03d}.png").write_bytes(data)
    return root


def ingest_folder(folder: Path, work: Path, seed: int = 0) -> Path:
    params = validate_params({"common": {"image_size": SIZE, "seed": seed},
                              "source": {"location": str(folder)},
                              "ingest": {"val_fraction": 0.2, "test_fraction": 0.3}})
    ingest.run(params, ingest.Args(dataset=work / "dataset", metrics=work / "i.json", report_dir=work / "ri"))
    return work / "dataset"


def run_promote(monkeypatch, work: Path, dataset: Path, model: Path, run_name: str, registry: Path) -> dict:
    monkeypatch.setattr("pipeline.stages.promote.run_identity", lambda root: {"run_name": run_name, "run_tag": None})
    params = validate_params({"common": {"image_size": SIZE},
                              "promote": {"registry": str(registry), "min_eval_per_class": 5}})
    evaluation = write_json(work / "evaluation.json", {"verdict": "positive", "recommended_model": "finetuned"})
    return promote.run(params, promote.Args(dataset=dataset, model=model, baseline=model, evaluation=evaluation,
                                            decision=work / f"{run_name}.json", validation=passed_gate(work)))
