"""Assessing the candidates of model selection: filters, weights, latency, scores, and the pick rule.

Each candidate passes, in order: input compatibility (fixed-size networks, minimum side; grayscale
is converted to RGB), the parameter and GFLOPs budgets (counted on a meta-device copy at the run's
image size), its weights (present, sha256, a plain state dict: else *unavailable* or *rejected*), the
latency budget (median batch-of-one forward of the loaded model on the device, after a warm-up).
The survivors are scored on a stratified sample of the train split from cached features: LogME,
out-of-fold kNN accuracy and linear-probe accuracy. Rule (:data:`RULE`): rank by ``select.rank_by``
(best first; ties by GFLOPs, then name) and pick the cheapest candidate (GFLOPs) whose score is
within ``select.tie_tolerance`` of the best.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from pipeline.config import SelectParams
from pipeline.data.shards import train_in_budget
from pipeline.models import LoadedModel, ModelSpec, WeightsRef, WeightsRejected, WeightsUnavailable, get_spec
from pipeline.models.build import build_architecture
from pipeline.models.cost import count_params, measure_gflops
from pipeline.models.embedding_cache import cached_embeddings
from pipeline.selection.scoring import bootstrap_ci, knn_predictions, linear_probe_predictions, logme, subsample_ci

__all__ = ["RULE", "Candidates", "spec_or_error", "stratified_sample", "assess", "rank_candidates"]
RULE = ("rank by {rank_by} (higher is better; ties by GFLOPs then name); pick the lowest-GFLOPs candidate "
        "whose {rank_by} is within {tol} of the best")


@dataclass(frozen=True)
class Candidates:
    """What every candidate is assessed on."""

    cfg: SelectParams
    dataset: os.PathLike  # the dataset directory, or the stage's GatedDataset (its quarantine left out)
    cache: Path
    ids: list[str]  # the stratified sample scored
    num_classes: int
    image_size: int
    device: torch.device
    seed: int
    num_workers: int
    grayscale: bool  # the data has non-RGB images (converted for the networks)


def spec_or_error(name: str) -> ModelSpec:
    """The spec of a candidate name; an unknown one names the params key."""
    try:
        return get_spec(name)
    except KeyError as err:
        raise ValueError(f"select.candidates: {err.args[0]}") from None


def stratified_sample(manifest: pd.DataFrame, per_class: int, seed: int) -> list[str]:
    """Up to ``per_class`` train images per class (inside the label budget), drawn with ``seed``.

    Args:
        manifest: the dataset manifest.
        per_class: images per class (all of a smaller class).
        seed: sampling seed.
    Returns:
        Image ids, sorted by class then id (a stable order for the feature cache key).
    Raises:
        ValueError: no train image is inside the label budget.
    """
    train = train_in_budget(manifest, "select")
    rng = np.random.default_rng(seed)
    ids = []
    for _, group in train.sort_values("id").groupby("label_idx", sort=True):
        take = min(per_class, len(group))
        ids += sorted(group["id"].to_numpy()[rng.choice(len(group), take, replace=False)].tolist())
    return ids


def assess(spec: ModelSpec, ctx: Candidates) -> dict:
    """One candidate's row: filtered / unavailable / rejected with the reason, or scored."""
    ref = _weights_ref(spec, ctx.cfg)
    row = {"name": spec.name, "arch": spec.arch, "status": "scored", "reason": "",
           "weights": {"uri": ref.uri, "sha256": ref.sha256}, "licence": spec.licence, "source": spec.source,
           "input": {"native_size": spec.input_size, "used_size": ctx.image_size, "grayscale_to_rgb": ctx.grayscale},
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
        model = LoadedModel.pretrained(spec.name, 0, ctx.image_size, weights=ref, hub_dir=ctx.cfg.hub_dir,
                                       allow_download=ctx.cfg.allow_download, seed=ctx.seed, device=ctx.device)
    except WeightsUnavailable as err:
        return {**row, "status": "unavailable", "reason": f"weights not found: {err}"}
    except WeightsRejected as err:
        return {**row, "status": "rejected", "reason": f"weights refused: {err}"}
    row["weights"] = {**model.weights, **({"hub_dir": ctx.cfg.hub_dir} if ctx.cfg.hub_dir else {})}
    latency = model.latency(ctx.cfg.latency_runs)
    row["latency_ms"], row["latency_spread_ms"] = round(latency.median_ms, 3), latency.spread()
    if ctx.cfg.max_latency_ms is not None and row["latency_ms"] > ctx.cfg.max_latency_ms:
        return {**row, "status": "filtered",
                "reason": f"latency {row['latency_ms']:.2f} ms > select.max_latency_ms {ctx.cfg.max_latency_ms}"}
    return {**row, **_score(model, ctx)}


def _weights_ref(spec: ModelSpec, cfg: SelectParams) -> WeightsRef:
    user = cfg.weights.get(spec.name)
    if user is None:
        return spec.weights
    return WeightsRef(user.uri, user.sha256, key_map=spec.weights.key_map)


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


def _score(model: LoadedModel, ctx: Candidates) -> dict:
    cfg = ctx.cfg
    fs = cached_embeddings(model, ctx.dataset, ctx.cache, split="train", ids=ctx.ids, batch_size=cfg.batch_size,
                           num_workers=ctx.num_workers)
    start = time.perf_counter()
    # One BLAS thread: these problems are small, and on a shared CPU many threads ran 30x slower.
    with threadpool_limits(limits=1):
        scores = _scores(fs.features, fs.labels, cfg, ctx.seed)
    scoring_s = time.perf_counter() - start
    cost = {"features_s": round(fs.seconds, 3), "features_cached": fs.seconds == 0.0,
            "scoring_s": round(scoring_s, 3), "total_s": round(fs.seconds + scoring_s, 3),
            "feature_cache": str(fs.path)}
    return {"scores": scores, "cost": cost}


def _scores(x: np.ndarray, y: np.ndarray, cfg: SelectParams, seed: int) -> dict:
    lp_ok = linear_probe_predictions(x, y, cfg.cv_folds, seed) == y
    knn_ok = knn_predictions(x, y, cfg.knn_k, cfg.cv_folds, seed) == y
    return {
        "linear_probe": _with_ci(lp_ok.mean(), bootstrap_ci(lp_ok, cfg.bootstrap, seed)),
        "knn": _with_ci(knn_ok.mean(), bootstrap_ci(knn_ok, cfg.bootstrap, seed)),
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

