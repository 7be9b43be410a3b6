"""Fine-tuning engine benchmark: the pipeline's loop against a plain PyTorch loop, and the feature cache.

    python -m bench.bench_finetune [--images 128] [--size 64] [--batch 32] [--repeats 3]

1. Training throughput: ``pipeline.training.Trainer`` (one full fine-tune epoch) against a plain loop
   written here with the same model, data, batch size, optimizer, loss, clipping and schedule, on
   the same threads. Ratio = pipeline images/s / plain images/s (goal >= 0.95). Repeats alternate
   the two (and which goes first) and the medians are compared.
2. Feature cache: one linear-probe epoch training on cached backbone features against one epoch that
   runs the frozen backbone (goal >= 10x), plus the one-off cost of filling the cache.
3. CUDA: both of the above with AMP on and off when a GPU is present; otherwise says none was measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.report import BenchReport
from pipeline.config import FreezeParams, TrainParams
from pipeline.freezing.blocks import block_param_counts
from pipeline.freezing.plan import DataStats, make_plan
from pipeline.models import LoadedModel, get_spec
from pipeline.training.data import TrainData
from pipeline.training.loop import RunContext, Trainer, warmup_cosine

MODEL = "efficientnet_lite0"


def _data(images: int, size: int) -> TrainData:
    generator = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(images, 3, size, size, generator=generator),
                          torch.randint(0, 10, (images,), generator=generator))
    val = TensorDataset(train.tensors[0][:64], train.tensors[1][:64])
    return TrainData(train=train, train_plain=train, val=val, augmented=False)


def _trainer(freeze: FreezeParams, cfg: TrainParams, data: TrainData, device: torch.device,
             feature_cache: bool = True) -> Trainer:
    model = LoadedModel.scratch(MODEL, 10, 64, seed=0).network
    blocks = get_spec(MODEL).blocks
    plan = make_plan(freeze, MODEL, blocks, block_param_counts(model, blocks), DataStats(len(data.train), 10))
    ckpt = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    return Trainer(model, plan, data, cfg, RunContext(device, 0, ckpt), patience=0, feature_cache=feature_cache)


def pipeline_images_per_s(data: TrainData, cfg: TrainParams, device: torch.device) -> float:
    """Images/s of the pipeline's training loop over one full fine-tune epoch (train loop only)."""
    trainer = _trainer(FreezeParams(strategy="full", epochs=1, bn_policy="train"), cfg, data, device)
    return trainer.fit().history[0]["images_per_s"]


def plain_images_per_s(data: TrainData, cfg: TrainParams, device: torch.device) -> float:
    """Images/s of a textbook PyTorch loop doing the same work (AdamW, smoothing, clipping, schedule)."""
    model = LoadedModel.scratch(MODEL, 10, 64, seed=0).network.to(device).train()
    loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        pin_memory=device.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=FreezeParams().lr, weight_decay=cfg.weight_decay)
    schedule = warmup_cosine(optimizer, len(loader), round(cfg.warmup_epochs * len(loader)))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp
                else torch.autocast("cpu", enabled=False))
    seen, started = 0, time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        seen += labels.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def loop_ratio(report: BenchReport, data: TrainData, cfg: TrainParams, device: torch.device, repeats: int,
               label: str) -> None:
    """Alternate pipeline and plain runs; emit the medians and their ratio."""
    pipe, plain = [], []
    for repeat in range(repeats):
        # alternate which goes first so that warm-up and background load favour neither
        runs = [(plain, plain_images_per_s), (pipe, pipeline_images_per_s)]
        for results, measure in (runs if repeat % 2 == 0 else runs[::-1]):
            results.append(measure(data, cfg, device))
    ratio = statistics.median(pipe) / statistics.median(plain)
    report.emit(figure="loop_vs_plain", setting=label, pipeline_img_s=round(statistics.median(pipe), 1),
                plain_img_s=round(statistics.median(plain), 1), ratio=round(ratio, 3), goal=0.95,
                meets_goal=ratio >= 0.95, runs_pipeline=[round(v, 1) for v in pipe],
                runs_plain=[round(v, 1) for v in plain])


def cache_speedup(report: BenchReport, data: TrainData, cfg: TrainParams, device: torch.device,
                  label: str) -> None:
    """One head-only epoch (a trained, not solved, head) on cached features vs one running the frozen backbone."""
    depth = len(get_spec(MODEL).blocks) - 1  # every block but the head frozen
    freeze = FreezeParams(strategy="partial", depth=depth, epochs=4)  # min over epochs: robust to load spikes
    seconds = {}
    for cache in (False, True):
        trainer = _trainer(freeze, cfg, data, device, feature_cache=cache)
        started = time.perf_counter()
        history = trainer.fit().history
        seconds[cache] = (min(r["seconds"] for r in history), time.perf_counter() - started)
    speedup = seconds[False][0] / seconds[True][0]
    report.emit(figure="feature_cache", setting=label, epoch_s_backbone=round(seconds[False][0], 4),
                epoch_s_cached=round(seconds[True][0], 5), speedup=round(speedup, 1), goal=10,
                meets_goal=speedup >= 10, run_s_backbone=round(seconds[False][1], 2),
                run_s_cached_incl_fill=round(seconds[True][1], 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = BenchReport("finetune")
    data = _data(args.images, args.size)
    base = TrainParams(batch_size=args.batch, augment="none", warmup_epochs=0.2)
    report.emit(setup=f"{MODEL} random init, {args.images} images {args.size}px, batch {args.batch}, "
                      f"{torch.get_num_threads()} threads, median of {args.repeats}")
    cpu = torch.device("cpu")
    loop_ratio(report, data, base, cpu, args.repeats, "cpu fp32")
    cache_speedup(report, data, base, cpu, "cpu fp32")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for amp in (True, False):
            cfg = base.model_copy(update={"amp": amp})
            loop_ratio(report, data, cfg, gpu, args.repeats, f"cuda amp={'on' if amp else 'off'}")
            cache_speedup(report, data, cfg, gpu, f"cuda amp={'on' if amp else 'off'}")
    else:
        report.emit(figure="cuda", setting="none measured: no GPU on this machine")
    report.save()


if __name__ == "__main__":
    main()
