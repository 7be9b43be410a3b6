"""Tiny params and data for running the whole chain in tests and benches: small enough for a 2-core CI
box, large enough that every stage does its real work (32 px, one real pretrained candidate, one
fine-tune epoch, 30 real digits per class read from a folder as a user's images would be)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

__all__ = ["TINY", "PER_CLASS", "UP_TO_FINETUNE", "write_digit_folder", "make_tiny_project", "cut_chain"]

PER_CLASS = 30
UP_TO_FINETUNE = ("ingest", "validate", "select", "freeze", "finetune")
TINY = {
    "common": {"image_size": 32},
    "shift": {"corruptions": ["gaussian_noise", "contrast"], "severities": [5], "per_cell": 20},
    "select": {"candidates": ["efficientnet_lite0"], "sample_per_class": 8, "bootstrap": 50, "cv_folds": 3,
               "latency_runs": 2},
    "freeze": {"epochs": 1},
    "train": {"min_epoch_steps": 3},
    "baseline": {"patience": 2, "max_epochs": 8},
    "curve": {"budgets": [3], "seeds": [0, 1, 2]},
    "evaluate": {"attack_images": 20, "interpret_classes": 2, "ideal_steps": 5, "adversarial_max_steps": 10},
    "drift": {"permutations": 100, "max_samples": 200},
    # 30 digits a class leave about 5 test images each: enough for orchestration tests to see a champion
    # crowned (it must still beat the majority class by the paired test), not for the full blessing
    "promote": {"min_eval_per_class": 1, "pixel_reference": False},
}


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def write_digit_folder(folder: Path, per_class: int = PER_CLASS, size: int = 32) -> Path:
    """The first ``per_class`` scikit-learn digits of each class as PNGs in an ImageFolder layout."""
    from pipeline.data.sources.digits import DigitsSource

    counts: dict[str, int] = {}
    for record in DigitsSource(size).records():
        if counts.get(record.label, 0) >= per_class:
            continue
        counts[record.label] = counts.get(record.label, 0) + 1
        (folder / record.label).mkdir(parents=True, exist_ok=True)
        (folder / record.label / f"{counts[record.label]:03d}.png").write_bytes(record.data)
    return folder


def make_tiny_project(project: Path, remote: Path, **sections: dict) -> Path:
    """Turn a project copy (a git repo) into a tiny one with its own image folder and DVC remote, committed;
    ``sections`` (section -> values) are merged over TINY."""
    source = write_digit_folder(remote.parent / "tiny-digits")
    params = _deep_update(_deep_update(yaml.safe_load((project / "params.yaml").read_text()), TINY), sections)
    params["source"]["location"] = str(source)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url", str(remote)],
                   cwd=project, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "tiny params"],
                   cwd=project, check=True)
    return project


def cut_chain(project: Path, keep: tuple[str, ...] = UP_TO_FINETUNE, **params: dict) -> Path:
    """Keep only the stages ``keep`` in the project's dvc.yaml and merge ``params`` (section -> values) into
    its params.yaml; committed. For tests and benches about orchestration, not about the later stages."""
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline["stages"] = {name: stage for name, stage in pipeline["stages"].items() if name in keep}
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    merged = _deep_update(yaml.safe_load((project / "params.yaml").read_text()), params)
    (project / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", f"chain cut to {keep[-1]}"],
                   cwd=project, check=True)
    return project
