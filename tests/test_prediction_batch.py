"""`tlops predict` on a small grayscale two-class set of photographs: the evaluate stage's predictions for
the same test images, a corrupt or undersized image reported per row (not fatal), an S3 batch on the local
S3 server, and the registry's champion by default."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.data.shards import iter_records
from pipeline.models import LoadedModel
from pipeline.registry import open_registry
from tests.support.drift_chain import SIZE, build_chain
from tests.support.photos import write_photo_folder
from tests.support.s3server import make_client


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("predict")
    chain = build_chain(work, write_photo_folder(work / "images", ["camera", "moon"], 24))
    # the test split as files, as a user would hand them over: class folders, the stored bytes
    chain["batch"] = work / "batch"
    chain["test_ids"] = {}
    for row, data in iter_records(chain["dataset"], split="test"):
        path = chain["batch"] / row["label"] / f"{row['id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        chain["test_ids"][str(path)] = row["id"]
    return chain


def _predict(source: str, out: Path, *args: str) -> int:
    return main(["predict", source, "--out", str(out), "--set", f"common.image_size={SIZE}", *args])


def _evaluate_path(chain: dict[str, Path]) -> dict[str, tuple[str, np.ndarray]]:
    """What the evaluate stage computes for the test split: LoadedModel.predict over the shard dataset."""
    model = LoadedModel.load(chain["model"])
    images = model.inputs(chain["dataset"], "test")
    probs, _, _ = model.predict(images)
    return {image_id: (model.classes[p.argmax()], p) for image_id, p in zip(images.rows["id"], probs)}


def test_predictions_on_test_images_equal_the_evaluate_stages(chain, tmp_path):
    bad = chain["batch"].parent / "with-bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes(next(iter(chain["batch"].rglob("*.png"))).read_bytes()[:60])
    tiny = io.BytesIO()
    Image.new("L", (4, 4)).save(tiny, "PNG")
    (bad / "tiny.png").write_bytes(tiny.getvalue())
    for path in chain["batch"].rglob("*.png"):
        (bad / path.parent.name).mkdir(exist_ok=True)
        (bad / path.parent.name / path.name).write_bytes(path.read_bytes())

    assert _predict(str(bad), tmp_path / "out", "--model", str(chain["model"]), "--top-k", "5") == 0
    frame = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(frame) == len(chain["test_ids"]) + 2
    refused = frame[frame["status"] == "refused"].set_index("source")["reason"]
    assert refused[str(bad / "truncated.png")].startswith("decodes: ")
    assert refused[str(bad / "tiny.png")].startswith("width_in_bounds: width 4 px outside [8, ")

    expected = _evaluate_path(chain)
    predicted = frame[frame["status"] == "predicted"]
    assert len(predicted) == len(expected)
    for row in predicted.itertuples():
        image_id = chain["test_ids"][str(chain["batch"] / Path(row.source).relative_to(bad))]
        label, probs = expected[image_id]
        assert row.predicted == label and row.label == Path(row.source).parent.name
        assert abs(row.confidence - probs.max()) < 1e-6 and abs(row.prob_1 + row.prob_2 - 1) < 1e-6
    assert "class_3" not in frame.columns  # top-k is capped at the number of classes
    assert (frame["model_version"] == str(chain["model"])).all()
    csv = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(csv.columns) == list(frame.columns) and len(csv) == len(frame)


def test_an_s3_batch_on_the_local_s3_server(chain, s3_endpoint, tmp_path):
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket="batches")
    for path in sorted(chain["batch"].rglob("*.png")):  # a flat prefix: no class folders, no labels
        client.put_object(Bucket="batches", Key=f"2026-12-04/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket="batches", Key="2026-12-04/notes.txt", Body=b"not an image")
    assert _predict("s3://batches/2026-12-04", tmp_path / "s3", "--model", str(chain["model"]),
                    "--set", f"source.s3_endpoint_url={s3_endpoint}") == 0
    frame = pd.read_parquet(tmp_path / "s3" / "predictions.parquet")
    assert frame.set_index("source").loc["s3://batches/2026-12-04/notes.txt", "status"] == "refused"
    predicted = frame[frame["status"] == "predicted"]
    expected = _evaluate_path(chain)
    assert len(predicted) == len(expected) and (predicted["label"] == "").all()
    for row in predicted.itertuples():
        assert row.predicted == expected[Path(row.source).stem][0]


def test_the_champion_is_the_default_model(chain, tmp_path, capsys):
    registry = open_registry(str(tmp_path / "registry"), tmp_path)
    registry.register("20260106-000000-champ", chain["model"], {"decision": "promoted"})
    registry.set_champion("20260106-000000-champ", {"test_accuracy": 0.5}, token=None)
    assert _predict(str(chain["batch"]), tmp_path / "out", "--set", f"promote.registry={tmp_path / 'registry'}") == 0
    frame = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert (frame["model_version"] == "champion 20260106-000000-champ").all()
    assert "classified by champion 20260106-000000-champ" in capsys.readouterr().out
    by_tag = tmp_path / "by-tag"
    assert _predict(str(chain["batch"]), by_tag, "--model", "run-20260106-000000-champ",
                    "--set", f"promote.registry={tmp_path / 'registry'}") == 0
    assert pd.read_parquet(by_tag / "predictions.parquet")["predicted"].tolist() == frame["predicted"].tolist()
    assert _predict(str(chain["batch"]), tmp_path / "none", "--model", "run-20990101-000000-nope",
                    "--set", f"promote.registry={tmp_path / 'registry'}") == 2
    assert "no version '20990101-000000-nope'" in capsys.readouterr().err
