"""What a training stage writes (pipeline/training/outputs.py), the fine-tune and the baseline alike: the model with
its card, metrics.json, the history CSV, the curves PNG and the DVCLive folder (the stages end to end:
tests/test_stage_finetune.py, tests/test_stage_evaluate.py)."""

from __future__ import annotations

import csv
import json

from PIL import Image

from pipeline.models import LoadedModel
from pipeline.training.curves import HISTORY_COLUMNS
from pipeline.training.outputs import TrainingOutputs
from pipeline.training.tracking import LiveHistory
from tests.support.training_data import TINY_MODEL

HISTORY = [{"epoch": e, "phase": "full", "phase_index": 0, "train_loss": 1.0 / e, "train_accuracy": 0.5,
            "val_loss": 1.1 / e, "val_accuracy": 0.4 + e / 10, "head_lr": 0.01, "images_per_s": 50.0,
            "seconds": 1.0, "steps": 4 * e} for e in (1, 2, 3)]


def test_the_model_card_metrics_history_and_curves_are_written_together(tmp_path):
    outputs = TrainingOutputs(tmp_path / "model", tmp_path / "metrics.json", tmp_path / "history.csv",
                              tmp_path / "curves.png")
    assert outputs.on_epoch() is None  # no DVCLive folder: no per-epoch hook
    model = LoadedModel.scratch(TINY_MODEL, 2, 32, classes=["a", "b"])
    metrics = {"val_accuracy": 0.7, "test_accuracy": 0.6}
    outputs.write(model, {"init": "random", "params": {"seed": 0}}, metrics, HISTORY, "a title")

    card = LoadedModel.load(tmp_path / "model").card
    assert card["init"] == "random" and card["params"] == {"seed": 0} and card["metrics"] == metrics
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert tuple(rows[0]) == HISTORY_COLUMNS and [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert Image.open(tmp_path / "curves.png").format == "PNG"


def test_a_dvclive_folder_gets_the_per_epoch_hook(tmp_path):
    hook = TrainingOutputs(tmp_path / "m", tmp_path / "m.json", tmp_path / "h.csv", tmp_path / "c.png",
                           live=tmp_path / "live").on_epoch()
    assert isinstance(hook, LiveHistory) and hook.folder == tmp_path / "live"
    hook(HISTORY)
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["val_accuracy"] == HISTORY[-1]["val_accuracy"]
