"""`tlops finetune` end to end on a tiny shard dataset: outputs, the model card, kill and --resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.data.images import decode_rgb
from pipeline.data.shards import iter_records
from pipeline.models import LoadedModel
from tests.support.training_data import TINY_MODEL, write_dataset, write_selection

pytestmark = pytest.mark.slow  # fine-tunes a network, twice

PARAMS = """
common: {image_size: 32, seed: 0}
freeze: {strategy: lp_ft, depth: 4, epochs: 3}
train: {batch_size: 16, eval_batch_size: 64, augment: none}
finetune: {patience: 0}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A project folder with params, a dataset and a freeze plan of the tiny model."""
    root = tmp_path_factory.mktemp("finetune")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(PARAMS)
    write_dataset(root / "ds", {"train": 36, "val": 12, "test": 12})
    write_selection(root / "selection.json", TINY_MODEL)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["freeze", "--dataset", "ds", "--selection", "selection.json", "--plan", "plan.json",
                     "--metrics", "freeze_metrics.json"]) == 0
    finally:
        os.chdir(cwd)
    return root


def _argv(out: str) -> list[str]:
    return ["finetune", "--dataset", "ds", "--plan", "plan.json", "--model-dir", f"{out}/model",
            "--metrics", f"{out}/metrics.json", "--history", f"{out}/history.csv", "--plot", f"{out}/curves.png",
            "--checkpoints", f"{out}/ckpt", "--live", f"{out}/live"]


def _live_rows(folder: Path, metric: str) -> list[dict]:
    """One DVCLive plot file (step, value per epoch)."""
    return list(csv.DictReader((folder / "plots" / "metrics" / f"{metric}.tsv").open(), delimiter="\t"))


@pytest.fixture(scope="module")
def uninterrupted(workdir) -> dict:
    """Metrics of a run from start to end (outputs under a/)."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        assert main(_argv("a")) == 0
    finally:
        os.chdir(cwd)
    return json.loads((workdir / "a/metrics.json").read_text())


def test_finetune_writes_model_card_metrics_history_and_curves(workdir, uninterrupted):
    metrics = uninterrupted
    assert metrics["epochs_run"] == 4 and metrics["cache"] == ["features", "off"]
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["val_accuracy"] >= 1 / 3
    rows = list(csv.DictReader((workdir / "a/history.csv").open()))
    assert [r["phase"] for r in rows] == ["linear_probe"] + ["finetune"] * 3
    # a fine-tune phase replaces the solved probe only when it beats it on val
    assert metrics["val_accuracy"] >= metrics["probe_val_accuracy"]
    assert ("the linear probe (val accuracy" in metrics["kept_reason"]) == (metrics["best_phase"] == "linear_probe")
    assert Image.open(workdir / "a/curves.png").format == "PNG"
    # DVCLive: one row per epoch, the same figures as the history; metrics.json holds the last epoch
    live = _live_rows(workdir / "a/live", "val_accuracy")
    assert [float(r["val_accuracy"]) for r in live] == [float(r["val_accuracy"]) for r in rows]
    assert [int(r["step"]) for r in live] == [0, 1, 2, 3]
    assert json.loads((workdir / "a/live/metrics.json").read_text())["val_loss"] == pytest.approx(
        float(rows[-1]["val_loss"]))

    loaded = LoadedModel.load(workdir / "a/model")
    card = loaded.card
    assert card["model"] == TINY_MODEL and card["classes"] == ["0", "1", "2"]
    assert card["freeze_plan"]["strategy"] == "lp_ft" and card["weights"]["uri"] == "random-init"
    assert card["data"]["train_images"] == 36 and len(card["data"]["version"]) == 64
    assert card["metrics"]["val_accuracy"] == metrics["val_accuracy"]
    test = list(iter_records(workdir / "ds", "test"))
    names, probs = loaded.predict_images([decode_rgb(data) for _, data in test])
    accuracy = sum(name == row["label"] for (row, _), name in zip(test, names)) / len(test)
    assert accuracy == pytest.approx(metrics["test_accuracy"]) and probs.shape == (12, 3)


def test_a_changed_state_dict_is_refused(workdir, uninterrupted, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(workdir / "a/model", copy)
    with open(copy / "model.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="model.pt: sha256 differs"):
        LoadedModel.load(copy)


def test_killed_run_resumes_to_the_uninterrupted_result(workdir, uninterrupted, monkeypatch):
    monkeypatch.chdir(workdir)
    env = {**os.environ, "TLOPS_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *_argv("b")], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = workdir / "b/ckpt/last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: after the first epoch's checkpoint, before the last epoch
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (workdir / "b/metrics.json").exists()
    assert main([*_argv("b"), "--resume"]) == 0
    resumed = json.loads((workdir / "b/metrics.json").read_text())
    for key in ("val_accuracy", "test_accuracy", "best_epoch", "epochs_run"):
        assert resumed[key] == uninterrupted[key], key
    assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-5)
    # the resumed DVCLive folder holds each epoch once, as the uninterrupted run's does
    assert len(_live_rows(workdir / "b/live", "train_loss")) == len(_live_rows(workdir / "a/live", "train_loss"))
