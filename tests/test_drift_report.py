"""The Evidently report (HTML + JSON), the review page, and the Workspace read back over HTTP from `evidently ui`."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest

from pipeline.drift.evidently import build_snapshot, report_frame, save_snapshot
from pipeline.drift.review import write_review_page
from pipeline.drift.workspace import PROJECT_NAME, add_snapshot, start_ui, wait_until_serving
from flows.server import free_port

CLASSES = ["0", "1", "2"]
DESCRIPTORS = ["brightness_mean", "blur_var"]


def _frame(n: int, seed: int, shift: float = 0.0, classes: list[str] = CLASSES) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    descriptors = pd.DataFrame({"brightness_mean": rng.normal(0.8 - shift, 0.05, n),
                                "blur_var": rng.normal(900 * (1 - shift), 50, n),
                                "width": np.full(n, 32.0), "contrast": 0.5 + rng.random(n) * 1e-16})
    logits = rng.normal(size=(n, len(classes))) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = pd.Series([classes[i] for i in rng.integers(0, len(classes), n)])
    return report_frame(descriptors, probs, rng.normal(shift, 1, size=(n, 4)), classes, labels)


def _snapshot(shift: float, name: str, classes: list[str] = CLASSES, current_classes: list[str] | None = None):
    metadata = {"drift_detected": str(shift > 0), "p_value": "0.001" if shift else "0.6"}
    current = _frame(80, 1, shift, classes)
    if current_classes is not None:  # a batch that shows only some of the classes
        current["label"] = [current_classes[i % len(current_classes)] for i in range(len(current))]
        current["prediction"] = current["label"].to_numpy()[::-1]
    return build_snapshot(_frame(120, 0, classes=classes), current, [*DESCRIPTORS, "width", "contrast"], metadata,
                          ["drift" if shift else "no drift"], name=name, classes=classes)


@pytest.mark.parametrize("classes, current_classes", [
    (["flower", "temple"], None),  # two string labels: Evidently's binary metrics looked up label 1
    (["cat", "dog", "fox"], ["cat", "fox"]),  # three classes, two in the batch: taken as binary too
    (["0", "1", "2"], None),
])
@pytest.mark.slow
def test_report_for_any_label_set_and_near_constant_descriptors(tmp_path, classes, current_classes):
    # width is constant and contrast varies by 1e-16 on both sides: numpy cannot bin them
    snapshot = _snapshot(0.3, "labels", classes, current_classes)
    values = save_snapshot(snapshot, tmp_path / "evidently.html", tmp_path / "evidently.json")
    accuracy = next(v for k, v in values.items() if k.startswith("Accuracy"))
    assert 0.0 <= accuracy <= 1.0
    assert snapshot.report.metadata["left_out_of_evidently"] == "width, contrast"


@pytest.mark.slow
def test_evidently_report_saved_as_html_and_json_with_its_metrics(tmp_path):
    values = save_snapshot(_snapshot(0.3, "shifted"), tmp_path / "evidently.html", tmp_path / "evidently.json")
    assert (tmp_path / "evidently.html").stat().st_size > 100_000
    saved = json.loads((tmp_path / "evidently.json").read_text())
    names = [m["metric_name"] for m in saved["metrics"]]
    assert any(n.startswith("DriftedColumnsCount") for n in names) and any("prediction" in n for n in names)
    assert any(n.startswith("EmbeddingsDrift") for n in names) and any(n.startswith("Accuracy") for n in names)
    brightness = next(v for k, v in values.items() if k.startswith("ValueDrift(column=brightness_mean"))
    assert brightness < 0.05  # Evidently's KS p-value sees the darker images


def test_review_page_leads_with_the_calibrated_decision(tmp_path):
    thumbs = tmp_path / "t.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(thumbs)
    moved = "sharpness (Laplacian variance) down: blur"
    summary = {"drift_detected": True, "p_value": 0.002, "alpha": 0.05, "rule": "Bonferroni over 2 tests",
               "current": "data/current", "descriptors_moved": [moved], "min_effect": 0.2,
               "tests": {"mmd": {"p_value": 0.001, "effect_size": 9.0, "effect_name": "mmd2_z", "n_reference": 26,
                                 "n_current": 50, "details": {"detectable_share": 0.41}}},
               "descriptors": [{"words": moved, "label": "sharpness (Laplacian variance)", "direction": "down",
                                "meaning": "blur", "explains": "variance of the Laplacian", "moved": True,
                                "effect_size": -2.0, "p_value": 1e-9}],
               "accuracy_current": 0.5, "accuracy_reference": 0.9, "domain_classifier_auc": 0.8,
               "n_reference": 26, "n_current": 50, "reference_set": {"split": "val"},
               "detectable": {"share": 0.41, "by_reference_size": [{"n_reference": 26, "detectable_share": 0.5}]},
               "warnings": ["the reference has 26 images (< drift.min_reference = 50)"],
               "groups": [{"group": "gaussian_blur 5", "n": 50, "drift_detected": True, "p_value": 0.01}]}
    page = write_review_page(tmp_path / "report.html", summary, thumbs, tmp_path / "evidently.html").read_text()
    assert page.index("DRIFT DETECTED") < page.index("Warning: the reference has 26 images") < page.index(moved) \
        < page.index("evidently.html")
    assert "<b>26</b> reference images" in page and "<b>41%</b> of the images are unlike" in page
    assert "data:image/png;base64," in page and "gaussian_blur 5" in page and "0.5000" in page


@pytest.mark.slow
def test_workspace_snapshots_are_served_by_evidently_ui(tmp_path):
    workspace = tmp_path / "workspace"
    first = add_snapshot(workspace, _snapshot(0.0, "run 1"))
    second = add_snapshot(workspace, _snapshot(0.3, "run 2"))
    assert first["project_id"] == second["project_id"] and first["snapshot_id"] != second["snapshot_id"]
    port = free_port()
    server = start_ui(workspace, "127.0.0.1", port, log_file=tmp_path / "ui.log")
    try:
        base = f"http://127.0.0.1:{port}/api/projects"
        wait_until_serving(base, server, timeout=90)
        projects = json.load(urllib.request.urlopen(base, timeout=10))
        project = next(p for p in projects if p["name"] == PROJECT_NAME)
        snapshots = json.load(urllib.request.urlopen(f"{base}/{project['id']}/snapshots", timeout=10))
    finally:
        server.terminate()
        server.wait(timeout=20)
    by_name = {s["name"]: s for s in snapshots}
    assert set(by_name) == {"run 1", "run 2"}
    assert by_name["run 2"]["metadata"]["drift_detected"] == "True" and "drift" in by_name["run 2"]["tags"]


def test_missing_workspace_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Evidently Workspace"):
        start_ui(tmp_path / "nowhere")


def test_report_frame_rejects_misaligned_rows():
    with pytest.raises(ValueError, match="row counts differ"):
        report_frame(pd.DataFrame({"a": [1.0, 2.0]}), np.ones((3, 2)) / 2, np.zeros((2, 1)), ["x", "y"])


def test_report_on_tiny_sets_leaves_out_the_embedding_view(tmp_path):
    # Evidently's embedding view needs a t-SNE over > 30 rows: 12 + 8 rows used to raise
    snapshot = build_snapshot(_frame(12, 0), _frame(8, 1, 0.3), DESCRIPTORS, {}, [], name="tiny", classes=CLASSES)
    values = save_snapshot(snapshot, tmp_path / "evidently.html", tmp_path / "evidently.json")
    assert not any(k.startswith("EmbeddingsDrift") for k in values) and any(k.startswith("Accuracy") for k in values)
