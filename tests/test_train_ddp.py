"""`tlops finetune` under torchrun: 2 CPU processes (gloo, DistributedDataParallel) match 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.test_training_data import TINY_MODEL, write_dataset, write_selection

TORCHRUN = Path(sys.executable).with_name("torchrun")
PARAMS = """
common: {image_size: 32, seed: 0}
freeze: {strategy: partial, depth: 3, epochs: 2, lr: 0.003}
finetune: {batch_size: 16, eval_batch_size: 64, augment: none, patience: 0}
"""


def _finetune(launcher: list[str], root: Path, out: str) -> dict:
    argv = ["-m", "pipeline.cli", "finetune", "--dataset", "ds", "--plan", "plan.json", "--model-dir", f"{out}/model",
            "--metrics", f"{out}/metrics.json", "--history", f"{out}/history.csv", "--plot", f"{out}/curves.png",
            "--checkpoints", f"{out}/ckpt"]
    env = {**os.environ, "TLOPS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / out / "metrics.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tmp_path, monkeypatch):
    assert TORCHRUN.is_file(), f"{TORCHRUN} missing"
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(PARAMS)
    write_dataset(tmp_path / "ds", {"train": 48, "val": 24})
    write_selection(tmp_path / "selection.json", TINY_MODEL)
    monkeypatch.chdir(tmp_path)
    assert main(["freeze", "--dataset", "ds", "--selection", "selection.json", "--plan", "plan.json",
                 "--metrics", "freeze_metrics.json"]) == 0

    single = _finetune([sys.executable], tmp_path, "one")
    double = _finetune([str(TORCHRUN), "--standalone", "--nproc_per_node", "2"], tmp_path, "two")
    assert (single["world_size"], double["world_size"]) == (1, 2)
    # same global batch and sample order: the two runs differ only by float reduction order
    assert double["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=1 / 24 + 1e-9)
    assert double["val_loss"] == pytest.approx(single["val_loss"], rel=0.02)
    assert single["val_accuracy"] > 0.5, "training must learn something for the comparison to mean anything"
