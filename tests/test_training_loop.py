"""The training engine: frozen parameters and BatchNorm statistics, per-block lrs, feature cache, resume."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import FinetuneParams, FreezeParams, TrainParams
from pipeline.training.frozen_features import cache_views, compute_features
from pipeline.freezing.blocks import block_of, block_param_counts
from pipeline.training.data import TrainData
from pipeline.training.loop import Precision, RunContext, Trainer
from pipeline.freezing.plan import DataStats, FreezePlan, make_plan
from pipeline.models import LoadedModel, get_spec
from tests.support.training_data import TINY_MODEL, tensor_dataset

BLOCKS = get_spec(TINY_MODEL).blocks
FAST = dict(batch_size=16, eval_batch_size=64, warmup_epochs=0.5)


def _data(train: int = 32, val: int = 12) -> TrainData:
    train_ds = tensor_dataset(train, seed=1)
    return TrainData(train=train_ds, train_plain=train_ds, val=tensor_dataset(val, seed=2), augmented=False)


def _plan(model: nn.Module, **freeze) -> FreezePlan:
    return make_plan(FreezeParams(**freeze), TINY_MODEL, BLOCKS, block_param_counts(model, BLOCKS), DataStats(32, 3))


def _fit(tmp_path, freeze: dict, finetune: dict | None = None, data: TrainData | None = None,
         train: dict | None = None, **ctx):
    model = LoadedModel.scratch(TINY_MODEL, 3, 32, seed=0).network
    plan = _plan(model, **freeze)
    own = FinetuneParams(**{"patience": 0, **(finetune or {})})
    trainer = Trainer(model, plan, data or _data(), TrainParams(**{**FAST, **(train or {})}),
                      RunContext(torch.device("cpu"), 0, tmp_path / "ckpt", **ctx), patience=own.patience,
                      feature_cache=own.feature_cache, cache_views=own.cache_views)
    return model, plan, trainer


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_params_are_bit_identical_and_absent_from_the_optimizer(tmp_path):
    model, plan, trainer = _fit(tmp_path, dict(strategy="partial", depth=3, epochs=1, bn_policy="frozen"))
    before = _snapshot(model)
    seen = []
    trainer.ctx.on_step = lambda step: seen.append({id(p) for g in trainer.optimizer.param_groups for p in g["params"]})
    trainer.fit()
    frozen = {id(p) for name, p in model.named_parameters() if block_of(name, BLOCKS) < 3}
    assert seen and all(not (ids & frozen) for ids in seen)
    for name, param in model.named_parameters():
        if block_of(name, BLOCKS) < 3:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    changed = [n for n, p in model.named_parameters() if block_of(n, BLOCKS) >= 3 and not torch.equal(p, before[n])]
    assert changed, "nothing trainable moved: the test would prove nothing"


@pytest.mark.parametrize("policy", ["frozen", "eval_all", "train"])
def test_batchnorm_statistics_follow_the_policy(tmp_path, policy):
    model, _, trainer = _fit(tmp_path, dict(strategy="partial", depth=3, epochs=1, bn_policy=policy))
    before = _snapshot(model)
    trainer.fit()
    for name, module in model.named_modules():
        if not isinstance(module, nn.BatchNorm2d):
            continue
        moved = not torch.equal(module.running_mean, before[f"{name}.running_mean"])
        frozen_block = block_of(name, BLOCKS) < 3
        expected = policy == "train" or (policy == "frozen" and not frozen_block)
        assert moved == expected, f"{policy}: BatchNorm {name} statistics moved={moved}"


def test_each_group_trains_at_the_planned_learning_rate(tmp_path):
    model, plan, trainer = _fit(tmp_path, dict(strategy="partial", depth=2, epochs=1, lr=1e-3, layer_decay=0.5),
                                train=dict(warmup_epochs=0.5))
    peaks = {}

    def record(step):
        if step == 1:  # end of the half-epoch warmup (32 images / 16 per batch): lr at its peak
            peaks.update({g["block"]: (g["lr"], g["initial_lr"]) for g in trainer.optimizer.param_groups})

    trainer.ctx.on_step = record
    trainer.fit()
    planned = plan.phases[0].lrs
    assert set(peaks) == set(planned) == set(BLOCKS[2:])
    for block, (lr, initial) in peaks.items():
        assert initial == planned[block] and lr == pytest.approx(planned[block], rel=1e-9), block
    assert planned["classifier"] == 1e-3 and planned[BLOCKS[2]] == pytest.approx(1e-3 * 0.5 ** 4)


def test_the_linear_probe_phase_is_solved_to_the_optimum(tmp_path):
    from sklearn.linear_model import LogisticRegression

    model, _, trainer = _fit(tmp_path, dict(strategy="linear_probe", probe_cs=[0.01, 1.0]))
    result = trainer.fit()
    (row,) = result.history
    assert row["phase"] == "linear_probe" and row["steps"] == 0 and result.converged
    (outcome,) = result.phases
    assert outcome["stopped_by"] == "solved" and outcome["c"] in (0.01, 1.0) and len(outcome["candidates"]) == 2
    # the head is the optimum of the logistic regression on the frozen features: it agrees with scikit-learn's
    data = trainer.data
    loader = torch.utils.data.DataLoader(data.train_plain, batch_size=64)
    features, labels = compute_features(model, loader, torch.device("cpu"), contextlib.nullcontext)
    x = features.numpy()
    mean = x.mean(0)
    scale = np.linalg.norm(x - mean, axis=1).mean()
    reference = LogisticRegression(C=outcome["c"], max_iter=5000, tol=1e-10).fit((x - mean) / scale, labels.numpy())
    with torch.no_grad():
        ours = model.get_classifier()(features).argmax(1).numpy()
    assert (ours == reference.predict((x - mean) / scale)).all()


class Jitter(torch.utils.data.Dataset):
    """A randomly augmented dataset: fresh noise on every read."""

    def __init__(self, base: torch.utils.data.TensorDataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        return x + 0.1 * torch.randn_like(x), y


@pytest.mark.slow
def test_augmented_views_are_cached_and_cycled(tmp_path):
    model = LoadedModel.scratch(TINY_MODEL, 3, 32).network
    loader = lambda: torch.utils.data.DataLoader(Jitter(tensor_dataset(12)), batch_size=8)  # noqa: E731
    views = cache_views(model, loader, 2, seed=0, device=torch.device("cpu"), autocast=contextlib.nullcontext)
    assert views.views.shape[:2] == (2, 12) and torch.equal(views.labels, tensor_dataset(12).tensors[1])
    assert not torch.allclose(views.views[0], views.views[1])
    views.set_epoch(3)
    torch.testing.assert_close(views[5][0], views.views[1, 5])
    again = cache_views(model, loader, 2, seed=0, device=torch.device("cpu"), autocast=contextlib.nullcontext)
    assert torch.equal(again.views, views.views), "a resumed run must cache the same views"

    base = _data()
    data = TrainData(train=Jitter(base.train), train_plain=base.train, val=base.val, augmented=True)
    head_only = dict(strategy="partial", depth=len(BLOCKS) - 1, epochs=2)  # a trained (not solved) head phase
    _, _, trainer = _fit(tmp_path, head_only, dict(cache_views=2), data=data)
    assert trainer.fit().cache_modes == ["views:2"]
    _, _, trainer = _fit(tmp_path / "b", {**head_only, "epochs": 1}, dict(cache_views=0), data=data)
    assert trainer.fit().cache_modes == ["features"]  # 0 views: the head trains on clean features


def test_early_stopping_ends_a_phase_without_improvement(tmp_path):
    _, _, trainer = _fit(tmp_path, dict(strategy="partial", depth=5, epochs=6, lr=1e-12), dict(patience=1))
    result = trainer.fit()
    assert len(result.history) == 2 and result.best["epoch"] == 1


class Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    freeze = dict(strategy="lp_ft", epochs=3, depth=3)
    whole, _, trainer = _fit(tmp_path / "whole", freeze)
    expected = trainer.fit()

    def crash(step):
        if trainer.optimizer.param_groups[0]["block"] != "classifier" and step == 3:  # 2nd epoch of the finetune
            raise Crash()

    crashed, _, trainer = _fit(tmp_path / "crashed", freeze, on_step=crash)
    with pytest.raises(Crash):
        trainer.fit()
    assert (tmp_path / "crashed" / "ckpt" / "last.pt").is_file()
    resumed, _, trainer = _fit(tmp_path / "crashed", freeze, resume=True)
    got = trainer.fit()
    assert [r["epoch"] for r in got.history] == [1, 2, 3, 4]
    for a, b in zip(expected.history, got.history):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    _, _, trainer = _fit(tmp_path, dict(strategy="linear_probe", probe_cs=[1.0]))
    trainer.fit()
    _, _, other = _fit(tmp_path, dict(strategy="linear_probe", probe_cs=[0.1]), resume=True)
    with pytest.raises(ValueError, match="last.pt: checkpoint is from a different run"):
        other.fit()


def test_cpu_bf16_autocast_trains(tmp_path):
    assert Precision.choose(torch.device("cpu"), TrainParams(cpu_bf16=True)).dtype == torch.bfloat16
    assert Precision.choose(torch.device("cpu"), TrainParams()).scaler() is None
    _, _, trainer = _fit(tmp_path, dict(strategy="partial", depth=4, epochs=1), train=dict(cpu_bf16=True))
    result = trainer.fit()
    assert math.isfinite(result.history[0]["train_loss"])
    assert 0 <= result.best["val_accuracy"] <= 1
