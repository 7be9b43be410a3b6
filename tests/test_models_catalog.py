"""The model catalog: names, errors, and blocks that partition every model's parameters."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import get_spec, list_models
from pipeline.models.cost import measure_gflops
from pipeline.models.build import build_architecture


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError, match="efficientnet_lite0.*resnet18.*timm:"):
        get_spec("efficientnet_lite9")
    with pytest.raises(KeyError, match="timm has no model"):
        get_spec("timm:not_a_model_xyz")


def _block_of(name: str, blocks: tuple[str, ...]) -> list[int]:
    return [i for i, block in enumerate(blocks)
            if any(name == p or name.startswith(p + ".") for p in block.split("+"))]


@pytest.mark.parametrize("name", [*list_models(), "timm:resnet18", "timm:vit_tiny_patch16_224"])
def test_blocks_cover_every_parameter_exactly_once_ending_with_the_head(name):
    spec = get_spec(name)
    with torch.device("meta"):  # building on meta costs nothing, even for ViT-B
        model = build_architecture(spec)
        model.reset_classifier(4)
    owners = {pname: _block_of(pname, spec.blocks) for pname, _ in model.named_parameters()}
    assert {p: o for p, o in owners.items() if len(o) != 1} == {}
    assert spec.blocks[-1] == spec.head
    assert set(owners[n][0] for n in owners if n.startswith(spec.head + ".")) == {len(spec.blocks) - 1}
    assert model.num_features == spec.feature_dim


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v3_small"])
def test_recorded_costs_match_a_measurement(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_architecture(spec)
    assert sum(p.numel() for p in model.parameters()) == spec.params
    assert measure_gflops(model, spec.input_size) == pytest.approx(spec.gflops, rel=0.01)


def test_random_init_control_and_timm_specs():
    control = get_spec("efficientnet_lite1.random_init")
    assert control.weights.is_random_init and control.arch == "tf_efficientnet_lite1"
    timm_spec = get_spec("timm:resnet18")
    assert timm_spec.blocks[0] == "conv1+bn1" and timm_spec.head == "fc" and timm_spec.weights.uri.startswith("hub:")
