"""The model layer: one preprocessing for every stage and every catalog model, EXIF-upright inputs,
checked weights, a latency taken after a warm-up.

The input-tensor test swaps the network of a :class:`LoadedModel` for a probe that records what it
is fed, then runs the very functions each stage calls to feed a model (selection's feature cache,
the training datasets, evaluation's scoring, drift's set outputs, promotion's test accuracy).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from pipeline.config import DriftParams
from pipeline.data.shards import read_manifest, write_manifest
from pipeline.drift.inputs import set_outputs
from pipeline.evaluation.assess import score
from pipeline.models import LoadedModel, Preprocessing, get_spec, list_models
from pipeline.models.embedding_cache import cached_embeddings
from pipeline.promotion.evalset import EvaluationSet, predicted_classes
from pipeline.training.data import training_data
from tests.support import badimages as bad

CLASSES = ["a", "b"]
TINY = "timm:test_efficientnet"


class RecordingNetwork(nn.Module):
    """A timm-API network that records every input batch it is given (and computes something cheap)."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.head = nn.Linear(3, num_classes)
        self.num_features = 3

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """A dataset and a current set whose every split holds one EXIF-rotated JPEG (stored 48x32, upright 32x48)."""
    work = tmp_path_factory.mktemp("rotated")
    data = bad.exif_rotated_jpeg(3, width=48, height=32)
    items = [bad.Item(f"r-{split}", "a", split, data) for split in ("train", "val", "test")]
    dataset = bad.write_dataset(work / "dataset", items, CLASSES)
    current = bad.write_dataset(work / "current", [bad.Item("r-current", "a", "test", data)], CLASSES)
    write_manifest(current, read_manifest(current).assign(corruption="none", severity=0, origin_id="r-test"))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert upright.size == (32, 48)
    return {"dataset": dataset, "current": current, "upright": upright, "work": work}


def _stage_inputs(model: LoadedModel, rotated: dict, tmp_path) -> dict[str, list[torch.Tensor]]:
    """The input tensors each stage's model-feeding code hands the network for the rotated image."""
    network: RecordingNetwork = model.network
    fed = {}

    def record(stage: str, call) -> None:
        network.seen.clear()
        call()
        fed[stage] = list(network.seen)

    dataset, current = rotated["dataset"], rotated["current"]
    record("select", lambda: cached_embeddings(model, dataset, tmp_path / "cache", split="train", ids=["r-train"]))
    # fine-tuning feeds train_plain to the frozen-backbone cache and val to every epoch's evaluation
    data = training_data(model.preprocessing, dataset, ["r-train"], "auto")
    fed["finetune"] = [data.train_plain[0][0][None], data.val[0][0][None]]
    record("evaluate", lambda: score(model, "m", dataset, current, ["r-current"], CLASSES, 15, 8))
    descriptors = pd.DataFrame({"id": ["r-test", "r-current"], "brightness_mean": [0.5, 0.5]})
    record("drift", lambda: (set_outputs(dataset, "test", model, DriftParams(), descriptors),
                             set_outputs(current, None, model, DriftParams(), descriptors)))
    # (the evaluation set would leave this image out: the same bytes are in the train split)
    test_image = EvaluationSet([(dataset, ["r-test"])], np.array(["a"], dtype=object), np.array(["-"], dtype=object))
    record("promote", lambda: predicted_classes(model, test_image))
    return fed


@pytest.mark.parametrize("name", [*list_models(), TINY])
def test_every_stage_feeds_the_same_upright_tensor(name, rotated, tmp_path):
    spec = get_spec(name)
    size = spec.input_size if spec.fixed_input_size else 64
    model = LoadedModel(name, spec, RecordingNetwork(), Preprocessing.for_spec(spec, size), {"uri": "test"},
                        CLASSES)
    expected = model.preprocessing.transform()(rotated["upright"])
    sideways = model.preprocessing.transform()(rotated["upright"].transpose(Image.Transpose.ROTATE_90))
    assert not torch.equal(expected, sideways)  # the test can tell an unrotated image from an upright one
    fed = _stage_inputs(model, rotated, tmp_path)
    assert set(fed) == {"select", "finetune", "evaluate", "drift", "promote"}
    for stage, batches in fed.items():
        assert batches, f"{stage} fed nothing"
        for batch in batches:
            assert batch.shape == (1, 3, size, size)
            assert torch.equal(batch[0], expected), f"{stage} fed {name} another tensor than the others"


def test_preprocessing_follows_the_spec_and_survives_the_card():
    lite, resnet = get_spec("efficientnet_lite0"), get_spec("resnet18")
    assert Preprocessing.for_spec(lite, 64).interpolation == "bicubic"
    assert Preprocessing.for_spec(resnet, 64).interpolation == "bilinear"
    saved = Preprocessing.for_spec(resnet, 96)
    assert Preprocessing.from_card({"preprocessing": saved.to_card()}, lite) == saved
    with pytest.raises(ValueError, match="interpolation 'nearest'"):
        Preprocessing(64, (0.5,) * 3, (0.5,) * 3, "nearest")


def test_shift_corrupts_the_upright_image(rotated, tmp_path):
    from pipeline.config import ShiftParams
    from pipeline.shift.current import corrupt_test_split

    cfg = ShiftParams(corruptions=["brightness"], severities=[1], include_clean=True)
    manifest = corrupt_test_split(rotated["dataset"], tmp_path / "shards", cfg, 0, 1 << 20)
    assert sorted(manifest["corruption"]) == ["brightness", "none"]
    corrupted = manifest[manifest["corruption"] == "brightness"]
    assert (int(corrupted["width"].iloc[0]), int(corrupted["height"].iloc[0])) == (32, 48)  # upright, as stored


def test_a_saved_model_loads_with_its_identity_and_a_checked_state_dict(tmp_path):
    model = LoadedModel.scratch(TINY + ".random_init", 2, 32, seed=3, classes=CLASSES)
    model.save(tmp_path / "m", {"note": "kept"})
    loaded = LoadedModel.load(tmp_path / "m")
    assert loaded.classes == CLASSES and loaded.preprocessing == model.preprocessing
    assert loaded.card["note"] == "kept" and loaded.weights == {"uri": "random-init", "seed": 3}
    assert loaded.fingerprint()["state_dict_sha256"] == loaded.card["state_dict_sha256"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.network.eval()(x), model.network.eval()(x))


def test_latency_is_timed_after_a_warm_up():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(len(calls))
            return x

    from pipeline.models.cost import measure_latency

    latency = measure_latency(Counting(), 8, torch.device("cpu"), runs=5, warmup=4, warmup_seconds=0.0)
    assert len(calls) == 4 + 5 and latency.runs == 5
    assert 0 <= latency.min_ms <= latency.q1_ms <= latency.median_ms <= latency.q3_ms <= latency.max_ms
