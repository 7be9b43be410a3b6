"""Freezing primitives, strategies, the auto rule and the `tlops freeze` stage."""

from __future__ import annotations

import json

import pytest
from torch import nn

from pipeline.cli import main
from pipeline.config import FreezeParams
from pipeline.freezing.blocks import block_lrs, block_of, block_param_counts, freeze_to, param_groups, set_train_mode
from pipeline.freezing.plan import DataStats, auto_choice, build_phases, load_plan, make_plan
from pipeline.models import LoadedModel, get_spec
from tests.support.training_data import TINY_MODEL, write_dataset, write_selection

BLOCKS = ("conv_stem+bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4+conv_head+bn2", "classifier")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return LoadedModel.scratch(TINY_MODEL, 3, 32).network


def test_blocks_cover_the_tiny_model_as_the_catalog_declares():
    assert get_spec(TINY_MODEL).blocks == BLOCKS


def test_block_of_takes_the_longest_prefix_and_joined_names():
    assert block_of("bn1.weight", BLOCKS) == 0
    assert block_of("blocks.1.0.conv_pw.weight", BLOCKS) == 2
    assert block_of("conv_head.weight", BLOCKS) == 5
    assert block_of("blocks.10.weight", ("blocks.1", "blocks.10")) == 1
    assert block_of("blocks.12", ("blocks.1",)) is None  # a prefix must end at a dot


def test_freeze_to_freezes_exactly_the_leading_blocks(tiny):
    frozen = freeze_to(tiny, BLOCKS, 3)
    for name, param in tiny.named_parameters():
        assert param.requires_grad == (block_of(name, BLOCKS) >= 3), name
    assert frozen and all(block_of(name, BLOCKS) < 3 for name in frozen)
    freeze_to(tiny, BLOCKS, 0)
    assert all(p.requires_grad for p in tiny.parameters())
    with pytest.raises(ValueError, match="head must stay trainable"):
        freeze_to(tiny, BLOCKS, len(BLOCKS))


def test_a_parameter_outside_every_block_is_an_error(tiny):
    with pytest.raises(ValueError, match="conv_stem.weight.*belongs to none of the blocks"):
        freeze_to(tiny, BLOCKS[1:], 1)


def test_bn_policy_puts_the_right_batchnorm_layers_in_eval_mode(tiny):
    set_train_mode(tiny, BLOCKS, 3, "frozen")
    for name, module in tiny.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training == (block_of(name, BLOCKS) >= 3), name
    set_train_mode(tiny, BLOCKS, 3, "eval_all")
    assert not any(m.training for m in tiny.modules() if isinstance(m, nn.BatchNorm2d))
    set_train_mode(tiny, BLOCKS, 3, "train")
    assert all(m.training for m in tiny.modules())
    with pytest.raises(ValueError, match="bn_policy 'sometimes'"):
        set_train_mode(tiny, BLOCKS, 3, "sometimes")


def test_layer_decay_and_param_groups_hold_only_trainable_blocks(tiny):
    lrs = block_lrs(BLOCKS, 4, lr=1e-3, layer_decay=0.5)
    assert lrs == {"blocks.3": 2.5e-4, "blocks.4+conv_head+bn2": 5e-4, "classifier": 1e-3}
    freeze_to(tiny, BLOCKS, 4)
    groups = param_groups(tiny, BLOCKS, lrs, weight_decay=0.01)
    assert [g["block"] for g in groups] == list(lrs)
    in_groups = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in tiny.parameters() if p.requires_grad}
    assert in_groups == trainable
    with pytest.raises(ValueError, match="no learning rate in the plan"):
        param_groups(tiny, BLOCKS, {"classifier": 1e-3}, 0.0)


@pytest.mark.parametrize("strategy,expected", [
    ("linear_probe", [("linear_probe", 6, 1)]),  # solved once, not trained for epochs
    ("partial", [("partial", 2, 5)]),
    ("full", [("full", 0, 5)]),
    ("lp_ft", [("linear_probe", 6, 1), ("finetune", 2, 5)]),
    ("gradual", [("unfreeze_0", 6, 1), ("unfreeze_2", 4, 1), ("unfreeze_4", 2, 3)]),
])
def test_strategies_compose_phases(strategy, expected):
    cfg = FreezeParams(epochs=5, gradual_every=1, gradual_step=2)
    phases = build_phases(strategy, 2, cfg, BLOCKS, [1] * len(BLOCKS))
    assert [(p.name, p.n_frozen, p.epochs) for p in phases] == expected
    assert all(bool(p.probe_cs) == (p.name == "linear_probe") for p in phases)
    assert all(p.cacheable == (p.n_frozen == len(BLOCKS) - 1) for p in phases)
    assert all(p.trainable_params == len(BLOCKS) - p.n_frozen for p in phases)


def test_auto_freezes_more_with_less_data_and_a_closer_domain():
    def depth(images, probe):
        return auto_choice(DataStats(images, 10, probe), 12)[:2]

    assert depth(50, 0.9)[0] == "linear_probe"  # 5 per class: too little to adapt anything
    strategy, close_small = depth(500, 0.98)
    assert strategy == "lp_ft"
    assert depth(500, 0.4)[1] < close_small  # distant domain -> fewer frozen blocks
    assert depth(20_000, 0.98)[1] < close_small  # more data -> fewer frozen blocks
    assert depth(200_000, 0.1)[1] == 0  # lots of data, distant domain: everything adapts
    assert auto_choice(DataStats(500, 10), 12)[3][2].startswith("domain distance 0.50")


def test_make_plan_honours_explicit_params_and_names_bad_values():
    counts = list(range(1, len(BLOCKS) + 1))
    plan = make_plan(FreezeParams(strategy="partial", depth=3, bn_policy="train"), "m", BLOCKS, counts,
                     DataStats(100, 3))
    assert (plan.strategy, plan.phases[0].n_frozen, plan.bn_policy) == ("partial", 3, "train")
    assert plan.to_json()["trainable_params"] == sum(counts[3:])
    with pytest.raises(ValueError, match="needs freeze.depth"):
        make_plan(FreezeParams(strategy="partial"), "m", BLOCKS, counts, DataStats(100, 3))
    with pytest.raises(ValueError, match="freeze.depth = 9"):
        make_plan(FreezeParams(strategy="lp_ft", depth=9), "m", BLOCKS, counts, DataStats(100, 3))


def test_freeze_stage_writes_a_plan_that_loads_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("common:\n  image_size: 32\n")
    dataset = write_dataset(tmp_path / "ds", {"train": 30, "val": 9})
    selection = write_selection(tmp_path / "selection.json", probe=0.95)
    plan_path = tmp_path / "out" / "freeze_plan.json"
    code = main(["freeze", "--dataset", str(dataset), "--selection", str(selection), "--plan", str(plan_path),
                 "--metrics", str(tmp_path / "out" / "metrics.json")])
    assert code == 0
    plan = load_plan(plan_path)
    assert plan.model == TINY_MODEL and plan.strategy == "lp_ft" and plan.data["per_class"] == 10
    assert plan.weights == {"uri": "random-init", "sha256": None}
    assert any("probe accuracy" in reason for reason in plan.why)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    network = LoadedModel.scratch(TINY_MODEL, 3, 32).network
    assert metrics["total_params"] == sum(p.numel() for p in network.parameters())


def test_freeze_stage_errors_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    dataset = write_dataset(tmp_path / "ds", {"train": 3, "val": 3})
    (tmp_path / "selection.json").write_text(json.dumps({"ranking": []}))
    code = main(["freeze", "--dataset", str(dataset), "--selection", str(tmp_path / "selection.json"),
                 "--plan", str(tmp_path / "p.json"), "--metrics", str(tmp_path / "m.json")])
    assert code == 2
    assert "selection.json: no 'selected' model name" in capsys.readouterr().err
    bad = tmp_path / "bad_plan.json"
    bad.write_text(json.dumps({"model": "m", "phases": []}))
    with pytest.raises(ValueError, match="bad_plan.json: freeze plan lacks key"):
        load_plan(bad)


def test_tiny_model_blocks_hold_every_parameter(tiny):
    assert sum(block_param_counts(tiny, BLOCKS)) == sum(p.numel() for p in tiny.parameters())
