"""Stage ``export``: the run's candidate model as TorchScript and ONNX, each checked on real test images.

Inputs: the dataset (its test split), the evaluation metrics (which model is the candidate: the fine-tuned
one unless the scratch baseline beat it) and both model directories.
Output: a bundle directory, the candidate's ``model.pt`` and ``card.json`` with ``model.torchscript.pt``,
``model.onnx`` and ``export.json`` beside them (pipeline/models/export.py); promotion registers this bundle,
so every registry version carries its serving files. ``metrics.json`` (DVC metrics): per format the largest
absolute logit difference from PyTorch and the top-1 agreement on the checked images.
Params: ``common`` and ``export`` (formats, tolerance, images checked).
Fails (exit 2) when an export's logits differ by more than ``export.atol`` or one top-1 class differs: a
serving file that disagrees with the evaluated model is never registered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.common.io import write_json
from pipeline.common.logs import get_logger
from pipeline.config import Params
from pipeline.models import LoadedModel
from pipeline.models.export import export_bundle
from pipeline.registry import run_candidate
from pipeline.stages.protocol import use_validated, validation_field

__all__ = ["Args", "run"]
log = get_logger(__name__)


@dataclass
class Args:
    """Paths of the export stage."""

    dataset: Path = field(metadata={"help": "dataset directory (its test split checks the exports)"})
    evaluation: Path = field(metadata={"help": "the evaluate stage's metrics.json (which model is the candidate)"})
    finetuned: Path = field(metadata={"help": "the fine-tuned model directory"})
    baseline: Path = field(metadata={"help": "the scratch baseline model directory"})
    out: Path = field(metadata={"help": "bundle directory to write: the candidate's files plus its exports"})
    metrics: Path = field(metadata={"help": "metrics.json to write (the checks of each format)"})
    validation: Path | None = validation_field()


def run(params: Params, args: Args) -> dict[str, Any]:
    """Export the candidate, check each format against PyTorch on test images, write the bundle."""
    dataset = use_validated(args.dataset, args.validation)
    cfg = params.export
    evaluation, model_dir = run_candidate(args.evaluation, args.finetuned, args.baseline)
    model = LoadedModel.load(model_dir, "cpu")  # exports are traced on the CPU: device-neutral files
    images = _test_batch(model, dataset, cfg.check_images)
    checks = export_bundle(model, model_dir, images, args.out, tuple(cfg.formats), cfg.atol,
                           {"candidate": evaluation["recommended_model"]})
    for name, check in checks.items():
        log.info("export: %s matches PyTorch on %d test images (max |logit diff| %.2e, top-1 agreement %.4f)",
                 name, check["images"], check["max_abs_logit_diff"], check["top1_agreement"])
    metrics = {"candidate": evaluation["recommended_model"], "model": model.name, "atol": cfg.atol,
               **{name: {key: check[key] for key in ("max_abs_logit_diff", "top1_agreement", "images", "bytes")}
                  for name, check in checks.items()}}
    write_json(args.metrics, metrics)
    return metrics


def _test_batch(model: LoadedModel, dataset: os.PathLike, limit: int) -> torch.Tensor:
    """Up to ``limit`` preprocessed test images (real ones: a random tensor would not exercise the
    value ranges the model sees), in split order."""
    test = model.inputs(dataset, "test")
    if len(test) < 2:
        raise ValueError(f"{dataset}: the test split holds {len(test)} image(s); checking an export needs 2 or more")
    return torch.stack([test[i][0] for i in range(min(limit, len(test)))])
