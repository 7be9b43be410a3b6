"""Drift and promotion on small real sets other than the digits: grayscale photo crops with string labels
(two and three classes), a new batch from a folder, a small reference, a failure mid-stage, a change of task.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common.io import write_json
from pipeline.config import validate_params
from pipeline.data.shards import read_classes
from pipeline.drift.detector import detect
from pipeline.models import LoadedModel
from pipeline.models.inference import probabilities
from pipeline.registry import open_registry
from pipeline.shift.corruptions import corrupt
from pipeline.stages import promote
from tests.support.drift_chain import MODEL, SIZE, build_chain, run_drift
from tests.support.gate import passed_gate
from tests.support.heads import train_head
from tests.support.photos import photo_crops, write_photo_folder


# about fifteen test images a class (promoted_set): the evidence and pixel-reference checks are
# test_promotion_blessing.py's
SMALL_SET_BLESSING = {"min_eval_per_class": 5, "pixel_reference": False}


def _chain(work: Path, photos: list[str], per_class: int, batch: Path | None = None) -> dict[str, Path]:
    return build_chain(work, write_photo_folder(work / "imgs", photos, per_class), batch)


@pytest.fixture(scope="module")
def two_class(tmp_path_factory) -> dict[str, Path]:
    return _chain(tmp_path_factory.mktemp("two"), ["chelsea", "brick"], 24)


@pytest.fixture(scope="module")
def promoted_set(tmp_path_factory) -> dict[str, Path]:
    """Two classes, enough test images for a blessing to decide on (a trained model beats the majority class)."""
    return _chain(tmp_path_factory.mktemp("promoted"), ["chelsea", "brick"], 50)


def _drift(chain: dict[str, Path], out: Path, *overrides: str) -> int:
    return run_drift(chain, out, *overrides)


@pytest.mark.slow
def test_two_string_classes_complete_with_sizes_and_what_they_can_detect(two_class, tmp_path):
    assert read_classes(two_class["dataset"]) == ["brick", "chelsea"]
    assert _drift(two_class, tmp_path) == 0  # Evidently's binary metrics used to fail with KeyError: 1
    summary = json.loads((tmp_path / "drift.json").read_text())
    n_reference = summary["n_reference"]
    assert n_reference < 50 and summary["n_current"] > 0
    share = summary["detectable"]["share"]
    assert 0 < share <= 1 and set(summary["detectable"]["per_test"]) == {"mmd", "ks_softmax"}
    assert any(f"the reference has {n_reference} images" in w for w in summary["warnings"])
    groups = {g["group"]: g for g in summary["groups"]}
    assert set(groups) == {"clean control", "gaussian_noise 5"}
    page = Path(summary["reports"]["html"]).read_text()
    assert f"<b>{n_reference}</b> reference images" in page and f"{100 * share:.0f}%" in page
    assert "Warning: the reference has" in page
    # grayscale crops at one size: width, height and aspect ratio are constant on both sides
    evidently = json.loads(Path(summary["reports"]["evidently_json"]).read_text())
    assert not any("column=width" in m["metric_name"] for m in evidently["metrics"])


@pytest.mark.slow
def test_train_plus_val_reference_reports_the_guard(two_class, tmp_path):
    assert _drift(two_class, tmp_path, "drift.reference_split=train+val") == 0
    summary = json.loads((tmp_path / "drift.json").read_text())
    guard = summary["reference_set"]["guard"]
    assert guard["n_train"] > 0 and guard["n_held_out"] > 0 and 0 <= guard["softmax_p"] <= 1
    # each test's reference: train+val where train looks like val, else val alone
    used = {summary["tests"]["mmd"]["n_reference"], summary["tests"]["ks_softmax"]["n_reference"]}
    assert used <= {guard["n_train"] + guard["n_held_out"], guard["n_held_out"]}
    assert "Over-confidence guard" in Path(summary["reports"]["html"]).read_text()


@pytest.mark.slow
def test_three_classes_and_a_new_batch_folder_in_its_own_group(tmp_path):
    batch = write_photo_folder(tmp_path / "week-48", ["chelsea", "brick", "grass"], 6, seed=9)
    chain = _chain(tmp_path / "three", ["chelsea", "brick", "grass"], 16, batch=batch)
    assert _drift(chain, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert [g["group"] for g in summary["groups"]] == ["batch:week-48"]  # not the clean control's label
    assert summary["groups"][0]["n"] == summary["n_current"] == 18
    assert "batch:week-48" in Path(summary["reports"]["html"]).read_text()


@pytest.mark.slow
def test_a_failure_inside_drift_leaves_the_previous_reports_whole(two_class, tmp_path, monkeypatch, capsys):
    assert _drift(two_class, tmp_path) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "workspace" not in p.parts}

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    # late in the stage: outliers.png and the Evidently report of the new run are already written
    monkeypatch.setattr("pipeline.drift.review.write_review_page", fail)
    capsys.readouterr()
    assert _drift(two_class, tmp_path) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tlops drift: internal error: RuntimeError: disk on fire (raised in tests/")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "workspace" not in p.parts}
    assert after == before  # the last run's drift.json, report.html, evidently.* and outliers.png, byte for byte


@pytest.mark.slow
def test_a_small_reference_is_calibrated_on_held_back_images_and_catches_heavy_noise():
    """20 seeded draws: 30 reference and 30 current images from one pool of real crops."""
    rng = np.random.default_rng(0)
    crops = [(name, data) for name in ("chelsea", "brick") for data in photo_crops(name, 60, rng, SIZE)]
    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in crops]
    model = LoadedModel.pretrained(MODEL, 2, SIZE, classes=["brick", "chelsea"])

    def outputs(batch: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        out = model.outputs(model.image_batches(batch), ("embeddings", "logits"))
        return out["embeddings"].numpy(), probabilities(out["logits"])

    emb, probs = outputs(images)
    alarms, shares = 0, []
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(len(images))
        ref, cur = order[:30], order[30:60]
        decision = detect(emb[ref], emb[cur], probs[ref], probs[cur], alpha=0.05, permutations=200, seed=seed)
        alarms += decision.drift_detected
        shares.append(decision.detectable_share)
    assert alarms <= 2, f"{alarms}/20 held-back batches flagged at alpha 0.05"
    assert all(0 < s < 1 for s in shares)
    order = np.random.default_rng(0).permutation(len(images))
    noisy = [corrupt(images[i], "gaussian_noise", 5, seed=int(i)) for i in order[30:60]]
    noisy_emb, noisy_probs = outputs(noisy)
    ref = order[:30]
    assert detect(emb[ref], noisy_emb, probs[ref], noisy_probs, alpha=0.05, permutations=200).drift_detected


@pytest.mark.slow
def test_promotion_refuses_a_model_for_another_set_of_classes(promoted_set, tmp_path, monkeypatch):
    registry = open_registry(str(tmp_path / "registry"), tmp_path)
    three = ["brick", "chelsea", "grass"]
    LoadedModel.pretrained(MODEL, 3, SIZE, classes=three).save(tmp_path / "champion", {})
    registry.register("20260101-000000-three", tmp_path / "champion", {"decision": "promoted"})
    registry.set_champion("20260101-000000-three", {"test_accuracy": 0.9}, token=None)
    evaluation = write_json(tmp_path / "evaluation.json", {"verdict": "positive", "recommended_model": "finetuned"})
    trained = train_head(promoted_set["dataset"], tmp_path / "trained")  # blessed: it must beat the majority class

    def run(allow: bool) -> dict:
        params = validate_params({"common": {"image_size": SIZE},
                                  "promote": {"registry": str(tmp_path / "registry"), "allow_task_change": allow,
                                              **SMALL_SET_BLESSING}})
        return promote.run(params, promote.Args(dataset=promoted_set["dataset"], model=trained, baseline=trained,
                                                evaluation=evaluation,
                                                decision=tmp_path / "decision.json",
                                                validation=passed_gate(tmp_path)))

    refused = run(allow=False)
    assert refused["promoted"] is False and refused["decision"] == "refused: task change"
    assert "drops ['grass']" in refused["reason"] and "promote.allow_task_change" in refused["reason"]
    assert registry.champion()["version"] == "20260101-000000-three"
    monkeypatch.setattr("pipeline.stages.promote.run_identity",
                        lambda root: {"run_name": "20260102-000000-two", "run_tag": None})
    allowed = run(allow=True)
    assert allowed["promoted"] is True and "task change allowed" in allowed["reason"]
    assert registry.champion()["version"] == "20260102-000000-two"


@pytest.mark.slow
def test_a_rerun_after_a_crash_inside_promotion_finishes_it(promoted_set, tmp_path, monkeypatch):
    from pipeline.registry import Registry

    monkeypatch.setattr("pipeline.stages.promote.run_identity",
                        lambda root: {"run_name": "20260103-000000-crash", "run_tag": None})
    evaluation = write_json(tmp_path / "evaluation.json", {"verdict": "positive", "recommended_model": "finetuned"})
    params = validate_params({"common": {"image_size": SIZE},
                              "promote": {"registry": str(tmp_path / "registry"), **SMALL_SET_BLESSING}})
    trained = train_head(promoted_set["dataset"], tmp_path / "trained")
    args = promote.Args(dataset=promoted_set["dataset"], model=trained, baseline=trained,
                        evaluation=evaluation, decision=tmp_path / "decision.json", validation=passed_gate(tmp_path))
    real = Registry.set_champion

    def crash(*a, **kw):
        raise RuntimeError("killed between registering the version and moving the champion")

    monkeypatch.setattr(Registry, "set_champion", crash)
    with pytest.raises(RuntimeError, match="killed"):
        promote.run(params, args)
    registry = open_registry(str(tmp_path / "registry"), tmp_path)
    assert registry.versions() == ["20260103-000000-crash"] and registry.champion() is None
    monkeypatch.setattr(Registry, "set_champion", real)
    decision = promote.run(params, args)  # used to fail with FileExistsError on every rerun
    assert decision["promoted"] is True and registry.champion()["version"] == "20260103-000000-crash"
    assert registry.versions() == ["20260103-000000-crash"]
