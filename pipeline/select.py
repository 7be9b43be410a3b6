"""Stage ``select``: score pretrained candidates on cached features and pick one.

Inputs: the dataset directory (train split, rows inside the label budget), the feature cache folder.
Outputs: ``selection.json`` (ranking table, every score with its 95% bootstrap interval, the cost of
scoring, the candidates removed and why), ``metrics.json`` and a score-vs-cost plot (PNG).
Params: ``common`` (seed, device, image_size, num_workers) and ``select``.

Each candidate passes, in order: input compatibility (fixed-size networks, minimum side; grayscale
is converted to RGB), the parameter and GFLOPs budgets (counted on a meta-device copy at
``common.image_size``), the weights check (present, sha256, plain state dict: else *unavailable* or
*rejected*), the latency budget (median batch-of-one forward on the device). The survivors are scored
on a stratified sample of the train split from cached features: LogME, out-of-fold kNN accuracy and
linear-probe accuracy. Rule: rank by ``select.rank_by`` (best first; ties by GFLOPs, then name) and
pick the cheapest candidate (GFLOPs) whose score is within ``select.tie_tolerance`` of the best.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from pipeline.common.device import select_device
from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.common.seeding import seed_everything
from pipeline.config import Params, SelectParams
from pipeline.data.shards import read_classes, read_manifest, use_validated, validation_field
from pipeline.features import dataset_version, get_features, weights_digest
from pipeline.zoo import WeightsRef, WeightsRejected, WeightsUnavailable, get_spec
from pipeline.zoo.cost import count_params, measure_gflops, measure_latency_ms
from pipeline.zoo.factory import build_architecture
from pipeline.zoo.report import plot_selection
from pipeline.zoo.scoring import bootstrap_ci, knn_predictions, linear_probe_predictions, logme, subsample_ci
from pipeline.zoo.specs import ModelSpec

__all__ = ["Args", "run", "stratified_sample", "rank_candidates", "RULE"]
log = get_logger(__name__)
RULE = ("rank by {rank_by} (higher is better; ties by GFLOPs then name); pick the lowest-GFLOPs candidate "
        "whose {rank_by} is within {tol} of the best")


@dataclass
class Args:
    """Paths of the select stage."""

    dataset: Path = field(metadata={"help": "dataset directory (manifest + shards)"})
    features: Path = field(metadata={"help": "feature cache folder"})
    out: Path = field(metadata={"help": "selection.json to write"})
    metrics: Path = field(metadata={"help": "metrics.json to write"})
    plot: Path = field(metadata={"help": "score-vs-cost PNG to write"})
    validation: Path | None = validation_field()


@dataclass(frozen=True)
class _Context:
    cfg: SelectParams
    dataset: Path
    cache: Path
    ids: list[str]
    num_classes: int
    image_size: int
    device: torch.device
    seed: int
    num_workers: int


def run(params: Params, args: Args) -> dict:
    """Filter, score and rank the candidates; write selection.json, metrics.json and the plot.

    Args:
        params: validated params (reads ``common`` and ``select``).
        args: stage paths.
    Returns:
        Summary: the pick, its scores, how many were scored and removed.
    """
    use_validated(args.dataset, args.validation)
    common, cfg = params.common, params.select
    seed_everything(common.seed)
    names = list(dict.fromkeys(cfg.candidates))
    specs = {name: _spec_or_error(name) for name in names}
    manifest = read_manifest(args.dataset)
    ids = stratified_sample(manifest, cfg.sample_per_class, common.seed)
    ctx = _Context(cfg, Path(args.dataset), Path(args.features), ids, len(read_classes(args.dataset)),
                   common.image_size, select_device(common.device), common.seed, common.num_workers)
    rows = [_assess(specs[name], ctx, _grayscale(manifest)) for name in names]
    ranked, pick = rank_candidates(rows, cfg.rank_by, cfg.tie_tolerance)
    if pick is None:
        raise ValueError("select: no candidate could be scored: " +
                         "; ".join(f"{r['name']}: {r['reason']}" for r in rows))
    sample_rows = manifest.set_index("id").loc[ids]
    selection = {
        "selected": pick["name"], "weights": pick["weights"],
        "rule": RULE.format(rank_by=cfg.rank_by, tol=cfg.tie_tolerance),
        "rank_by": cfg.rank_by, "seed": common.seed, "image_size": common.image_size, "device": str(ctx.device),
        "sample": {"per_class": cfg.sample_per_class, "images": len(ids), "classes": ctx.num_classes,
                   "dataset_version": dataset_version(sample_rows["sha256"].tolist())},
        "ranking": ranked,
        "removed": [{k: r[k] for k in ("name", "status", "reason")} for r in rows if r["status"] != "scored"],
        "scoring_seconds": round(sum(r["cost"]["total_s"] for r in ranked), 3),
    }
    write_json(args.out, selection)
    metrics = {"selected": pick["name"], "scored": len(ranked), "removed": len(selection["removed"]),
               "scoring_seconds": selection["scoring_seconds"],
               **{f"selected_{k}": v["value"] for k, v in pick["scores"].items()}}
    write_json(args.metrics, metrics)
    plot_selection(selection, args.plot)
    log.info("selected %s (%s = %.4f)", pick["name"], cfg.rank_by, pick["scores"][cfg.rank_by]["value"])
    return {**metrics, "selection": str(args.out), "plot": str(args.plot)}


def _spec_or_error(name: str) -> ModelSpec:
    try:
        return get_spec(name)
    except KeyError as err:
        raise ValueError(f"select.candidates: {err.args[0]}") from None


def _grayscale(manifest: pd.DataFrame) -> bool:
    return bool((manifest["mode"] != "RGB").any())


def stratified_sample(manifest: pd.DataFrame, per_class: int, seed: int) -> list[str]:
    """Up to ``per_class`` train images per class (inside the label budget), drawn with ``seed``.

    Args:
        manifest: the dataset manifest.
        per_class: images per class (all of a smaller class).
        seed: sampling seed.
    Returns:
        Image ids, sorted by class then id (a stable order for the feature cache key).
    Raises:
        ValueError: the train split is empty.
    """
    train = manifest[(manifest["split"] == "train") & manifest["in_budget"].astype(bool)]
    if train.empty:
        raise ValueError("select: the dataset has no train images inside the label budget")
    rng = np.random.default_rng(seed)
    ids = []
    for _, group in train.sort_values("id").groupby("label_idx", sort=True):
        take = min(per_class, len(group))
        ids += sorted(group["id"].to_numpy()[rng.choice(len(group), take, replace=False)].tolist())
    return ids


def _assess(spec: ModelSpec, ctx: _Context, grayscale: bool) -> dict:
    """One candidate's row: filtered / unavailable / rejected with the reason, or scored."""
    ref = _weights_ref(spec, ctx.cfg)
    row = {"name": spec.name, "arch": spec.arch, "status": "scored", "reason": "",
           "weights": {"uri": ref.uri, "sha256": ref.sha256}, "licence": spec.licence, "source": spec.source,
           "input": {"native_size": spec.input_size, "used_size": ctx.image_size, "grayscale_to_rgb": grayscale},
           "params_m": None, "gflops": None, "latency_ms": None, "scores": {}, "cost": {"total_s": 0.0}}
    reason = _incompatible(spec, ctx.image_size)
    if reason:
        return {**row, "status": "filtered", "reason": reason}
    meta = _meta_model(spec, ctx.num_classes)
    row["params_m"] = round(count_params(meta) / 1e6, 4)
    row["gflops"] = round(measure_gflops(meta, ctx.image_size), 4)
    reason = _over_budget(row, ctx.cfg)
    if reason:
        return {**row, "status": "filtered", "reason": reason}
    try:
        row["weights"]["sha256"] = weights_digest(spec, ref, ctx.cfg.hub_dir, ctx.cfg.allow_download, ctx.seed)
    except WeightsUnavailable as err:
        return {**row, "status": "unavailable", "reason": f"weights not found: {err}"}
    except WeightsRejected as err:
        return {**row, "status": "rejected", "reason": f"weights refused: {err}"}
    row["latency_ms"] = round(_latency(spec, ctx), 3)
    if ctx.cfg.max_latency_ms is not None and row["latency_ms"] > ctx.cfg.max_latency_ms:
        return {**row, "status": "filtered",
                "reason": f"latency {row['latency_ms']:.2f} ms > select.max_latency_ms {ctx.cfg.max_latency_ms}"}
    return {**row, **_score(spec, ref, ctx)}


def _weights_ref(spec: ModelSpec, cfg: SelectParams) -> WeightsRef:
    user = cfg.weights.get(spec.name)
    if user is None:
        return spec.weights
    return WeightsRef(user.uri, user.sha256 or spec.weights.sha256, key_map=spec.weights.key_map)


def _incompatible(spec: ModelSpec, image_size: int) -> str:
    if spec.fixed_input_size and image_size != spec.input_size:
        return (f"input: needs {spec.input_size}x{spec.input_size} images (fixed input size), "
                f"common.image_size is {image_size}")
    if image_size < spec.min_input_size:
        return f"input: needs at least {spec.min_input_size} px, common.image_size is {image_size}"
    return ""


def _meta_model(spec: ModelSpec, num_classes: int) -> torch.nn.Module:
    # On the meta device building costs nothing, and FLOPs/params are counted without real tensors.
    with torch.device("meta"):
        model = build_architecture(spec)
        model.reset_classifier(num_classes)
    return model


def _over_budget(row: dict, cfg: SelectParams) -> str:
    if cfg.max_params_m is not None and row["params_m"] > cfg.max_params_m:
        return f"params {row['params_m']:.2f}M > select.max_params_m {cfg.max_params_m}"
    if cfg.max_gflops is not None and row["gflops"] > cfg.max_gflops:
        return f"GFLOPs {row['gflops']:.3f} > select.max_gflops {cfg.max_gflops}"
    return ""


def _latency(spec: ModelSpec, ctx: _Context) -> float:
    # Timing does not depend on the weight values: an untrained copy of the architecture is enough.
    model = build_architecture(spec).to(ctx.device)
    return measure_latency_ms(model, ctx.image_size, ctx.device, runs=ctx.cfg.latency_runs)


def _score(spec: ModelSpec, ref: WeightsRef, ctx: _Context) -> dict:
    cfg = ctx.cfg
    fs = get_features(spec.name, ctx.dataset, ctx.cache, split="train", ids=ctx.ids, image_size=ctx.image_size,
                      device=ctx.device, batch_size=cfg.batch_size, num_workers=ctx.num_workers, weights=ref,
                      hub_dir=cfg.hub_dir, allow_download=cfg.allow_download, seed=ctx.seed)
    start = time.perf_counter()
    x, y = fs.features, fs.labels
    # One BLAS thread: these problems are small, and on a shared CPU many threads ran 30x slower.
    with threadpool_limits(limits=1):
        scores = _scores(x, y, cfg, ctx.seed)
    scoring_s = time.perf_counter() - start
    cost = {"features_s": round(fs.seconds, 3), "features_cached": fs.seconds == 0.0,
            "scoring_s": round(scoring_s, 3), "total_s": round(fs.seconds + scoring_s, 3),
            "feature_cache": str(fs.path)}
    return {"scores": scores, "cost": cost, "weights": {"uri": ref.uri, "sha256": fs.weights_sha256}}


def _scores(x: np.ndarray, y: np.ndarray, cfg: SelectParams, seed: int) -> dict:
    lp_ok = linear_probe_predictions(x, y, cfg.cv_folds, seed) == y
    knn_ok = knn_predictions(x, y, cfg.knn_k, cfg.cv_folds, seed) == y
    return {
        "linear_probe": _with_ci(lp_ok.mean(), bootstrap_ci(lambda i: lp_ok[i].mean(), len(y), cfg.bootstrap, seed)),
        "knn": _with_ci(knn_ok.mean(), bootstrap_ci(lambda i: knn_ok[i].mean(), len(y), cfg.bootstrap, seed)),
        "logme": _with_ci(logme(x, y), subsample_ci(lambda i: logme(x[i], y[i]), len(y), cfg.logme_subsamples, seed)),
    }


def _with_ci(value: float, ci: tuple[float, float]) -> dict:
    return {"value": round(float(value), 6), "ci95": [round(ci[0], 6), round(ci[1], 6)]}


def rank_candidates(rows: list[dict], rank_by: str, tolerance: float) -> tuple[list[dict], dict | None]:
    """Order the scored candidates and apply the pick rule (:data:`RULE`).

    Args:
        rows: candidate rows; only ``status == "scored"`` ones are ranked.
        rank_by: the score that ranks (``linear_probe``, ``knn`` or ``logme``).
        tolerance: candidates within this of the best score compete on GFLOPs.
    Returns:
        (ranked rows with a 1-based ``rank``, the picked row or None when nothing was scored).
    """
    scored = [r for r in rows if r["status"] == "scored"]
    ranked = sorted(scored, key=lambda r: (-r["scores"][rank_by]["value"], r["gflops"], r["name"]))
    ranked = [{**r, "rank": i + 1} for i, r in enumerate(ranked)]
    if not ranked:
        return ranked, None
    best = ranked[0]["scores"][rank_by]["value"]
    close = [r for r in ranked if r["scores"][rank_by]["value"] >= best - tolerance]
    pick = min(close, key=lambda r: (r["gflops"], -r["scores"][rank_by]["value"], r["name"]))
    return ranked, pick
