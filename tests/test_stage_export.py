"""`tlops export` on a small grayscale two-class set of photographs: TorchScript and ONNX beside model.pt,
each checked against PyTorch, run here in ONNX Runtime, refused when tampered with, and registered with
the version by promotion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.common.io import write_json
from pipeline.config import validate_params
from pipeline.models import LoadedModel
from pipeline.models.export import (EXPORT_CARD, FORMATS, export_formats, exported_logits, load_torchscript,
                                   onnx_session)
from pipeline.registry import open_registry
from pipeline.stages import promote
from tests.support.drift_chain import SIZE, build_chain
from tests.support.gate import passed_gate
from tests.support.photos import write_photo_folder

pytestmark = pytest.mark.slow  # ONNX and TorchScript exports of a real network

TOLERANCE = 1e-3  # export.atol's default: float32 kernels of the three runtimes differ by ~1e-5


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("export")
    chain = build_chain(work, write_photo_folder(work / "images", ["camera", "moon"], 24))
    chain["evaluation"] = write_json(work / "evaluation.json",
                                     {"verdict": "positive", "recommended_model": "finetuned"})
    chain["validation"] = passed_gate(work)
    return chain


@pytest.fixture(scope="module")
def exported(chain, tmp_path_factory) -> Path:
    """One export of the chain's model, shared (each export takes ~20 s on a CPU); returns its folder."""
    out = tmp_path_factory.mktemp("exported")
    assert _export(chain, out) == 0
    return out


def _export(chain: dict[str, Path], out: Path, *overrides: str) -> int:
    argv = ["export", "--dataset", str(chain["dataset"]), "--evaluation", str(chain["evaluation"]),
            "--finetuned", str(chain["model"]), "--baseline", str(chain["model"]), "--out", str(out / "serving"),
            "--metrics", str(out / "metrics.json"), "--validation", str(chain["validation"]),
            "--set", f"common.image_size={SIZE}"]
    for item in overrides:
        argv += ["--set", item]
    return main(argv)


def _test_images(chain: dict[str, Path]) -> tuple[torch.Tensor, np.ndarray]:
    model = LoadedModel.load(chain["model"])
    test = model.inputs(chain["dataset"], "test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        return images, model.network(images).numpy()


def test_exports_match_pytorch_on_real_images_and_run_in_onnx_runtime(chain, exported):
    bundle = exported / "serving"
    assert {"model.pt", "card.json", EXPORT_CARD, *FORMATS.values()} <= {p.name for p in bundle.iterdir()}
    card = json.loads((bundle / EXPORT_CARD).read_text())
    metrics = json.loads((exported / "metrics.json").read_text())
    assert all(card["formats"][name]["passed"] for name in FORMATS) and metrics["candidate"] == "finetuned"

    images, reference = _test_images(chain)
    assert len(images) >= 10 and metrics["onnx"]["images"] == len(images)
    for name, runner in (("onnx", onnx_session(bundle)), ("torchscript", load_torchscript(bundle))):
        logits = exported_logits(name, runner, images)
        assert np.abs(logits - reference).max() <= TOLERANCE, name
        assert (logits.argmax(1) == reference.argmax(1)).all(), name
    # the batch size is dynamic: one image and an odd batch run too
    session = onnx_session(bundle)
    for n in (1, 7):
        assert session.run(["logits"], {"images": images[:n].numpy()})[0].shape == (n, 2)


def test_a_tampered_export_is_refused_before_loading(exported, tmp_path):
    shutil.copytree(exported / "serving", tmp_path / "serving")
    onnx_file = tmp_path / "serving" / FORMATS["onnx"]
    onnx_file.write_bytes(onnx_file.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(ValueError, match=r"model.onnx: sha256 differs from .*export.json"):
        onnx_session(tmp_path / "serving")


def test_an_export_outside_the_tolerance_fails_and_writes_nothing(chain, tmp_path, capsys):
    assert _export(chain, tmp_path, "export.atol=1e-12", "export.formats=[onnx]") == 2
    err = capsys.readouterr().err
    assert "onnx export disagrees with PyTorch on" in err and "export.atol 1e-12" in err
    assert not (tmp_path / "serving").exists() and not (tmp_path / "metrics.json").exists()


def test_promotion_registers_the_bundle_with_its_exports(chain, exported, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.stages.promote.run_identity",
                        lambda root: {"run_name": "20260105-000000-exported", "run_tag": None})
    params = validate_params({"common": {"image_size": SIZE}, "promote": {"registry": str(tmp_path / "registry")}})
    args = promote.Args(dataset=chain["dataset"], model=chain["model"], baseline=chain["model"],
                        evaluation=chain["evaluation"], decision=tmp_path / "decision.json",
                        validation=chain["validation"], exports=exported / "serving")
    # every candidate is registered, blessed or not (this untrained one is not): with its exports
    assert promote.run(params, args)["version"] == "20260105-000000-exported"
    registry = open_registry(str(tmp_path / "registry"), tmp_path)
    stored = registry.model_dir("20260105-000000-exported", tmp_path / "scratch")
    assert (stored / FORMATS["onnx"]).is_file() and load_torchscript(stored) is not None

    other = LoadedModel.pretrained("efficientnet_lite0", 2, SIZE, classes=["camera", "moon"], seed=5)
    other.save(tmp_path / "other", {})
    args.model = tmp_path / "other"  # a bundle exported from another model than the candidate
    with pytest.raises(ValueError, match="exports another model than the candidate"):
        promote.run(params, args)


def test_the_network_comes_back_with_its_in_place_activations_whatever_the_export_does(tmp_path, monkeypatch):
    """The ONNX export switches in-place activations off while it traces (pipeline/models/export.py): the
    network a stage goes on using keeps them, after a written export and after one that failed."""
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True), torch.nn.Hardswish(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    example = torch.rand(2, 3, 8, 8)
    export_formats(network, example, tmp_path, ("onnx",))
    assert network[1].inplace is True and network[2].inplace is False
    with torch.no_grad():
        expected = network(example[:1]).numpy()
    written = onnx_session(tmp_path / FORMATS["onnx"]).run(["logits"], {"images": example[:1].numpy()})[0]
    assert np.abs(written - expected).max() < 1e-5

    seen = []

    def failing_export(module, *args, **kwargs):
        seen.append([m.inplace for m in module.modules() if hasattr(m, "inplace")])
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_formats(network, example, tmp_path, ("onnx",))
    assert seen == [[False, False]] and network[1].inplace is True
