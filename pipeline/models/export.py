"""Serving exports of a trained model: TorchScript and ONNX beside ``model.pt``, each checked against PyTorch.

A serving stack loads these without our code: TorchScript with ``torch.jit.load`` (C++ LibTorch too),
ONNX with ONNX Runtime, TensorRT or OpenVINO. Both take a float32 batch ``images`` [N, 3, S, S],
already preprocessed as the card's ``preprocessing`` says (resize to S, scale to [0, 1], normalise by
mean/std), and return ``logits`` [N, classes] in the card's class order. The batch size is dynamic.

An export is trusted only after it has been run on real images and compared with the PyTorch model it
came from: the largest absolute logit difference must stay within a tolerance and every top-1 class
must be the same. ``export.json`` records the checks and the sha256 of each file, and the loaders here
refuse a file whose digest differs.

Layout added to a model directory::

    model.torchscript.pt   torch.jit.save of the traced network
    model.onnx             one self-contained ONNX file (no external data), opset ONNX_OPSET
    export.json            per format: file, sha256, max_abs_logit_diff, top1_agreement, images checked
"""

from __future__ import annotations

import io
import os
import shutil
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from pipeline.common.io import atomic_dir, read_json, sha256_file, write_json
from pipeline.common.logs import get_logger

if TYPE_CHECKING:
    from pipeline.models.loaded import LoadedModel

__all__ = ["FORMATS", "EXPORT_CARD", "ONNX_OPSET", "export_bundle", "export_formats", "check_exports",
           "load_torchscript", "onnx_session", "exported_logits", "trace_to_onnx"]
log = get_logger(__name__)
EXPORT_CARD = "export.json"
FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
ONNX_OPSET = 18  # ONNX Runtime >= 1.14, TensorRT >= 8.6 and OpenVINO >= 2023.1 all run it


def export_formats(network: torch.nn.Module, example: torch.Tensor, out_dir: Path,
                   formats: tuple[str, ...] = tuple(FORMATS)) -> dict[str, float]:
    """Write each format's file of ``network`` into ``out_dir``; returns the seconds each took.

    Args:
        network: the model in eval mode, on the CPU.
        example: a preprocessed batch of at least two images (the batch dimension is exported as dynamic;
            one image would pin it to 1).
        out_dir: where the files go (the caller makes the folder atomic).
        formats: a subset of FORMATS.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export formats {unknown}: choose from {sorted(FORMATS)}")
    if example.shape[0] < 2:
        raise ValueError("export needs an example batch of at least 2 images (the batch size is exported dynamic)")
    network = network.eval()
    seconds = {}
    for name in formats:
        started = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and exporter chatter about constants; the check below decides
            _WRITERS[name](network, example, out_dir / FORMATS[name])
        seconds[name] = round(time.perf_counter() - started, 2)
        log.info("export: %s written in %.1fs (%s)", name, seconds[name], out_dir / FORMATS[name])
    return seconds


def _write_torchscript(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    # tracing, not scripting: timm networks trace cleanly, and the check below catches any branch it froze
    torch.jit.save(torch.jit.trace(network, example), str(path))


def _write_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    # the exporter's tracing turns each in-place activation into a functional op plus a copy back, with symbolic
    # shape arithmetic for the dynamic batch: out of place EfficientNet-Lite0 and MobileNetV3 export in 0.6 to 0.75
    # of the CPU time (bench/bench_export.py), to the same graph; the trained network is given back as it came
    in_place = [module for module in network.modules() if getattr(module, "inplace", None) is True]
    try:
        for module in in_place:
            module.inplace = False
        trace_to_onnx(network, example, path)
    finally:
        for module in in_place:
            module.inplace = True


def trace_to_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The dynamo exporter's call on ``network`` as it is: one file, opset ONNX_OPSET, the batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with redirect_stdout(io.StringIO()):  # the exporter prints a line per phase; our log says it once
        torch.onnx.export(network, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                          external_data=False)


_WRITERS: dict[str, Callable[[torch.nn.Module, torch.Tensor, Path], None]] = {
    "torchscript": _write_torchscript, "onnx": _write_onnx}


def export_bundle(model: "LoadedModel", model_dir: Path, images: torch.Tensor, out: Path, formats: tuple[str, ...],
                  atol: float, card: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Write the serving bundle ``out`` (replaced whole): ``model_dir``'s files, each format's export and
    export.json, after every export matched ``model`` on ``images`` (else a ValueError naming the format, and
    nothing is written).

    Args:
        model: the model of ``model_dir``, loaded on the CPU.
        model_dir: its directory (model.pt, card.json and what the stage put beside them).
        images: real preprocessed images, at least 2 (the first 8 trace the exports).
        out: the bundle directory.
        formats: a subset of FORMATS.
        atol: the largest absolute logit difference from PyTorch allowed.
        card: more fields for export.json (e.g. which model of the run it is).
    Returns:
        Per format: its check (:func:`check_exports`) and the seconds the export took.
    """
    with torch.no_grad():
        reference = model.network(images).numpy()
    with atomic_dir(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        seconds = export_formats(model.network, images[:min(len(images), 8)], tmp, formats)
        checks = check_exports(tmp, reference, images, formats, atol)
        failed = {name: check for name, check in checks.items() if not check["passed"]}
        if failed:
            raise ValueError("; ".join(
                f"{name} export disagrees with PyTorch on {check['images']} images: max |logit difference| "
                f"{check['max_abs_logit_diff']:.2e} (export.atol {atol:.0e}), top-1 agreement "
                f"{check['top1_agreement']:.4f}" for name, check in failed.items()))
        checks = {name: {**check, "export_seconds": seconds[name]} for name, check in checks.items()}
        write_json(tmp / EXPORT_CARD, {
            "model": model.name, **(card or {}), "state_dict_sha256": model.card["state_dict_sha256"],
            "classes": model.classes, "preprocessing": model.preprocessing.to_card(),
            "input": "images: float32 [N, 3, S, S], preprocessed", "output": "logits: float32 [N, classes]",
            "atol": atol, "formats": checks})
    return checks


def check_exports(model_dir: Path, reference: np.ndarray, images: torch.Tensor, formats: tuple[str, ...],
                  atol: float) -> dict[str, dict[str, Any]]:
    """Run each exported file on ``images`` and compare its logits with the PyTorch ``reference``.

    Returns:
        Per format: file, sha256, images, max_abs_logit_diff, top1_agreement, passed.
    """
    checks = {}
    for name in formats:
        path = model_dir / FORMATS[name]
        logits = exported_logits(name, _runner(name, path), images)
        diff = float(np.abs(logits - reference).max())
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        checks[name] = {"file": FORMATS[name], "sha256": sha256_file(path), "bytes": path.stat().st_size,
                        "images": int(images.shape[0]), "max_abs_logit_diff": diff,
                        "top1_agreement": agreement, "passed": bool(diff <= atol and agreement == 1.0)}
    return checks


def exported_logits(name: str, runner: Any, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Logits [N, C] (float32) of a loaded export (:func:`load_torchscript` / :func:`onnx_session`)."""
    parts = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].contiguous()
        if name == "onnx":
            parts.append(runner.run(["logits"], {"images": batch.numpy()})[0])
        else:
            with torch.no_grad():
                parts.append(runner(batch).numpy())
    return np.concatenate(parts).astype(np.float32)


def _runner(name: str, path: Path) -> Any:
    return onnx_session(path) if name == "onnx" else load_torchscript(path)


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; serving stacks (LibTorch) still load it
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _checked_file(model_dir: str | os.PathLike, name: str) -> Path:
    """The export file of ``name`` after its sha256 matched export.json's (never load a swapped file)."""
    model_dir = Path(model_dir)
    card = read_json(model_dir / EXPORT_CARD)
    entry = card.get("formats", {}).get(name)
    if entry is None:
        raise FileNotFoundError(f"{model_dir / EXPORT_CARD}: no {name} export (run `tlops export`)")
    path = model_dir / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {name} export missing (dvc pull, or rerun `tlops export`)")
    if sha256_file(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 differs from {model_dir / EXPORT_CARD} (file changed after the export)")
    return path


def load_torchscript(path_or_dir: str | os.PathLike) -> torch.jit.ScriptModule:
    """A model directory's checked TorchScript export (or a .pt file), on the CPU, in eval mode."""
    path = Path(path_or_dir)
    return _jit_load(_checked_file(path, "torchscript") if path.is_dir() else path)


def onnx_session(path_or_dir: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on a model directory's checked ONNX export (or on an .onnx file), computing
    with ``threads`` threads (None: ONNX Runtime's default, one per core)."""
    import onnxruntime

    path = Path(path_or_dir)
    if path.is_dir():
        path = _checked_file(path, "onnx")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the graph optimiser's notes are not the user's business
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
