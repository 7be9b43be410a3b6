"""The promotion blessing (pipeline/promotion/): its checks on per-image answers, then the promote stage on
real image folders (grayscale photo crops, two and three classes, imbalanced, labels drawn at random) with
real classifiers (a pretrained network whose head is trained on each folder)."""

from __future__ import annotations


import numpy as np
import pytest

from pipeline.config import PromoteParams
from pipeline.data.shards import read_manifest
from pipeline.promotion.blessing import bless, blessing_markdown
from pipeline.promotion.evalset import DataRecord, evaluation_set
from pipeline.registry import DATA, open_registry
from tests.support.heads import SIZE, train_head
from tests.support.photos import photo_crops
from tests.support.promotion import ingest_folder, photo_class_folder, run_promote

CLASSES = [str(i) for i in range(5)]


def _answers(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Predictions right with probability ``accuracy``, else another class."""
    wrong = np.array([rng.choice([c for c in CLASSES if c != label]) for label in labels], dtype=object)
    return np.where(rng.random(len(labels)) < accuracy, labels, wrong)


def _checks(result: dict) -> dict[str, dict]:
    return {c["check"]: c for c in result["checks"]}


def test_a_candidate_better_on_average_but_losing_a_whole_class_is_refused_naming_it():
    rng = np.random.default_rng(0)
    labels = np.repeat(CLASSES, 40).astype(object)
    champion = _answers(rng, labels, 0.80)
    candidate = labels.copy()  # right everywhere ...
    lost = labels == "3"
    candidate[lost] = "4"  # ... but class 3, which it never gets
    assert (candidate == labels).mean() > (champion == labels).mean()
    result = bless(labels, candidate, {"majority_class": np.full(len(labels), "0", dtype=object)}, champion,
                   CLASSES, PromoteParams(superiority=False))
    checks = _checks(result)
    assert result["outcome"] == "refused" and not checks["per_class"]["passed"]
    kept = int((champion[lost] == "3").sum())
    assert f"class '3': recall 0/40 (0.00) against the champion's {kept}/40" in result["reason"]
    assert checks["per_class"]["recalls"]["3"] == {"n": 40, "candidate": 0, "champion": kept,
                                                   "drop": round(kept / 40, 4)}
    assert checks["gain"]["passed"]  # the mean alone would have promoted it


def test_a_model_at_chance_is_never_the_first_champion():
    rng = np.random.default_rng(1)
    labels = rng.choice(CLASSES, 200, p=[0.4, 0.15, 0.15, 0.15, 0.15]).astype(object)
    majority = np.full(len(labels), "0", dtype=object)
    result = bless(labels, rng.choice(CLASSES, 200).astype(object), {"majority_class": majority}, None, CLASSES,
                   PromoteParams())
    assert result["outcome"] == "refused" and "does not beat the trivial reference" in result["reason"]
    assert "majority class" in result["reason"]
    good = bless(labels, _answers(rng, labels, 0.9), {"majority_class": majority}, None, CLASSES, PromoteParams())
    assert good["outcome"] == "promoted" and good["reason"].startswith("no champion to compare with")


def test_too_few_images_of_a_class_is_insufficient_evidence_whatever_the_scores():
    labels = np.array(["0"] * 30 + ["1"] * 30 + ["2"] * 3, dtype=object)
    result = bless(labels, labels.copy(), {"majority_class": np.full(63, "0", dtype=object)}, None, ["0", "1", "2"],
                   PromoteParams(min_eval_per_class=10))
    assert result["outcome"] == "insufficient evidence"
    assert "1 of 3 classes have fewer than promote.min_eval_per_class = 10 evaluation images ('2' 3)" in \
        result["reason"]


def test_as_good_is_kept_champion_a_significant_gain_promotes_a_loss_is_refused():
    rng = np.random.default_rng(2)
    labels = np.repeat(CLASSES, 60).astype(object)
    champion = _answers(rng, labels, 0.85)
    references = {"majority_class": np.full(len(labels), "0", dtype=object)}
    cfg = PromoteParams()
    tie = bless(labels, champion.copy(), references, champion, CLASSES, cfg)
    assert tie["outcome"] == "kept champion" and _checks(tie)["non_inferiority"]["passed"]
    better = champion.copy()
    better[rng.choice(np.flatnonzero(champion != labels), 30, replace=False)] = None
    better = np.where(better == None, labels, better)  # noqa: E711  30 mistakes fixed
    promoted = bless(labels, better, references, champion, CLASSES, cfg)
    assert promoted["outcome"] == "promoted", promoted["reason"]
    worse = bless(labels, champion, references, better, CLASSES, cfg)
    assert worse["outcome"] == "refused" and not _checks(worse)["non_inferiority"]["passed"]
    # a small gain on the mean, not significant: promoted only when the params ask for no superiority test
    slightly = champion.copy()
    slightly[np.flatnonzero(champion != labels)[:3]] = labels[np.flatnonzero(champion != labels)[:3]]
    assert bless(labels, slightly, references, champion, CLASSES, cfg)["outcome"] == "kept champion"
    assert bless(labels, slightly, references, champion, CLASSES,
                 PromoteParams(superiority=False))["outcome"] == "promoted"


# ---- the promote stage on real folders and real classifiers ---------------------------------------------------


@pytest.mark.slow
def test_a_first_run_on_labels_drawn_at_random_is_not_crowned(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    crops = [c for photo in ("chelsea", "brick", "grass") for c in photo_crops(photo, 60, rng, SIZE)]
    for j, data in enumerate(crops):  # imbalanced labels that say nothing about the image
        label = rng.choice(["a", "b", "c"], p=[0.45, 0.3, 0.25])
        (tmp_path / "imgs" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / label / f"{j:03d}.png").write_bytes(data)
    dataset = ingest_folder(tmp_path / "imgs", tmp_path)
    model = train_head(dataset, tmp_path / "model")
    decision = run_promote(monkeypatch, tmp_path, dataset, model, "20260101-000000-random", tmp_path / "registry")
    assert decision["promoted"] is False and decision["decision"].startswith("refused: references")
    assert "does not beat the trivial reference" in decision["reason"] and "majority class" in decision["reason"]
    registry = open_registry(str(tmp_path / "registry"), tmp_path)
    assert registry.champion() is None and registry.versions() == ["20260101-000000-random"]  # kept, not crowned
    assert "| references | NO |" in blessing_markdown(decision)


@pytest.mark.slow
def test_a_candidate_from_a_small_easy_folder_is_judged_on_the_champions_test_images_too(tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    # the champion learned two classes that each span two photos; the candidate's folder holds one photo a class
    broad = ingest_folder(photo_class_folder(tmp_path / "broad",
                                             {"x": ["chelsea", "grass"], "y": ["brick", "astronaut"]}, 40),
                          tmp_path / "a")
    first = run_promote(monkeypatch, tmp_path, broad, train_head(broad, tmp_path / "champion"),
                     "20260101-000000-broad", registry)
    assert first["promoted"] is True, first["reason"]
    easy = ingest_folder(photo_class_folder(tmp_path / "easy", {"x": ["chelsea"], "y": ["brick"]}, 30, seed=1),
                         tmp_path / "b")
    decision = run_promote(monkeypatch, tmp_path, easy, train_head(easy, tmp_path / "candidate"),
                        "20260102-000000-easy", registry)
    evalset = decision["blessing"]["evaluation_set"]
    assert evalset["champion_data"] == "registered"
    assert evalset["from"]["champion"] == int((read_manifest(broad)["split"] == "test").sum()) > 0
    assert evalset["from"]["candidate"] == int((read_manifest(easy)["split"] == "test").sum())
    assert decision["promoted"] is False and decision["decision"].startswith("refused"), decision["reason"]
    assert "non_inferiority" in decision["decision"]
    assert decision["test_accuracy"] < decision["champion_test_accuracy"]
    assert open_registry(str(registry), tmp_path).champion()["version"] == "20260101-000000-broad"


@pytest.mark.slow
def test_the_same_recipe_retrained_with_another_seed_is_not_a_promotion(tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    dataset = ingest_folder(photo_class_folder(tmp_path / "imgs", {"rocket": ["rocket"], "gravel": ["gravel"],
                                                  "coffee": ["coffee"]}, 40), tmp_path)
    assert run_promote(monkeypatch, tmp_path, dataset, train_head(dataset, tmp_path / "s0", seed=0),
                    "20260101-000000-seed0", registry)["promoted"] is True
    again = run_promote(monkeypatch, tmp_path, dataset, train_head(dataset, tmp_path / "s1", seed=1),
                     "20260102-000000-seed1", registry)
    checks = {c["check"]: c for c in again["blessing"]["checks"]}
    assert again["decision"] == "kept champion" and again["promoted"] is False, again["reason"]
    assert checks["non_inferiority"]["passed"] and not checks["gain"]["passed"]
    evalset = again["blessing"]["evaluation_set"]  # the same test images on both sides, counted once
    assert evalset["from"]["champion"] == 0 and evalset["duplicates"] == evalset["from"]["candidate"]


def test_no_evaluation_image_was_trained_on_by_either_model_after_the_data_grew(tmp_path):
    first = ingest_folder(photo_class_folder(tmp_path / "v1", {"cat": ["chelsea"], "cup": ["coffee"]}, 30),
                          tmp_path / "r1")
    record = DataRecord.of_dataset(first).write(tmp_path / "version" / DATA)
    # the data grew, and the team split it again (another seed): former test images are now trained on
    grown = photo_class_folder(tmp_path / "v2", {"cat": ["chelsea"], "cup": ["coffee"]}, 30)
    photo_class_folder(tmp_path / "v2-more", {"cat": ["chelsea"], "cup": ["coffee"]}, 20, seed=5)
    for path in (tmp_path / "v2-more").rglob("*.png"):
        path.rename(grown / path.parent.name / f"more-{path.name}")
    second = ingest_folder(grown, tmp_path / "r2", seed=1)
    images = evaluation_set(DataRecord.of_dataset(second), ["cat", "cup"], DataRecord.of_version(record), "registered")
    old, new = read_manifest(first), read_manifest(second)
    trained = set(old.loc[old["split"] != "test", "sha256"]) | set(new.loc[new["split"] != "test", "sha256"])
    assert len(images) > 0 and not set(images.sha256) & trained
    assert images.record["excluded_trained_on"]["candidate"] > 0  # old test images now in the new train split
    assert images.record["duplicates"] > 0  # test images in both runs' test splits count once
    assert len(set(images.sha256)) == len(images)
    tested = set(old.loc[old["split"] == "test", "sha256"]) | set(new.loc[new["split"] == "test", "sha256"])
    assert set(images.sha256) == tested - trained
