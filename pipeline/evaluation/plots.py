"""The evaluation figures as PNGs (matplotlib, Agg backend), each written atomically.

Each function takes plain data (the same dicts that go into metrics.json) and a target path, so the
figures can never show numbers that metrics.json does not hold.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from pipeline.common.figures import plt, save_figure

__all__ = ["SIDE_COLOURS", "curve_points", "plot_label_efficiency", "plot_robustness", "plot_confusions",
           "plot_learning_curves",
           "plot_ideal_inputs", "plot_adversarial_pairs", "plot_fgsm"]

SIDE_COLOURS = {"transfer": "tab:blue", "finetuned": "tab:blue", "linear_probe": "tab:green", "scratch": "tab:red"}


def curve_points(metrics: Mapping) -> list[dict]:
    """Every plotted point of the label-efficiency figure: the budgets (both sides over seeds) and all labels
    (the fine-tuned model and the converged scratch baseline)."""
    points = [{"budget": p["name"], "n_labels": p["n_labels"], "side": side, "accuracy": p[side]["mean"],
               "low": p[side]["low"], "high": p[side]["high"], "converged": p[side]["converged"]}
              for p in metrics["label_efficiency"]["budgets"] for side in ("transfer", "scratch")]
    full, n_all = metrics["full_labels"], metrics["labels_saved"]["n_reference"]
    for side in ("finetuned", "scratch"):
        points.append({"budget": "all", "n_labels": n_all, "side": "transfer" if side == "finetuned" else "scratch",
                       "accuracy": full[f"{side}_accuracy"], **full[f"{side}_interval"],
                       "converged": side == "finetuned" or not full["baseline_problem"]})
    return points


def plot_label_efficiency(points: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Test accuracy against labels used with the intervals: the linear probe and scratch at each budget
    (over seeds), the fine-tuned model and the scratch baseline with all labels; a scratch point that did
    not converge is hollow.

    Args:
        points: from :func:`curve_points`.
        path: PNG to write.
    Returns:
        The path.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = {"transfer": "transfer (probe; fine-tuned at all labels)", "scratch": "scratch, trained to convergence"}
    for side in ("transfer", "scratch"):
        mine = sorted((p for p in points if p["side"] == side), key=lambda p: p["n_labels"])
        n = [p["n_labels"] for p in mine]
        ax.plot(n, [p["accuracy"] for p in mine], "-", color=SIDE_COLOURS[side], label=names[side])
        ax.fill_between(n, [p["low"] for p in mine], [p["high"] for p in mine], color=SIDE_COLOURS[side], alpha=0.2)
        for p in mine:
            ax.plot(p["n_labels"], p["accuracy"], "o", color=SIDE_COLOURS[side],
                    mfc=SIDE_COLOURS[side] if p["converged"] else "white")
    ticks = sorted({(p["n_labels"], p["budget"]) for p in points})
    ax.set_xscale("log")
    ax.minorticks_off()  # only the budgets themselves are labelled
    ax.set_xticks([n for n, _ in ticks], [f"{n}\n({name})" for n, name in ticks], fontsize=8)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Label efficiency: transfer vs scratch trained to convergence")
    return save_figure(fig, path)


def plot_robustness(robustness: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike,
                    unscored: str | None = None) -> Path:
    """Accuracy against corruption severity, one panel per corruption, one line per model.

    Args:
        robustness: model -> corruption -> str(severity) -> accuracy.
        path: PNG to write.
        unscored: why the shift set was not scored (no labels): the figure says it instead.
    Returns:
        The path.
    """
    if unscored:
        fig, ax = plt.subplots(figsize=(6.4, 1.6))
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"Robustness not measured: the domain-shift set {unscored}", 90)),
                ha="center", va="center", fontsize=8)
        ax.axis("off")
        return save_figure(fig, path)
    corruptions = sorted({c for per_model in robustness.values() for c in per_model if c != "none"})
    cols = min(4, max(len(corruptions), 1))
    rows = -(-max(len(corruptions), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, corruption in zip(axes.flat, corruptions):
        for model, per_model in robustness.items():
            levels = {**per_model.get("none", {}), **per_model.get(corruption, {})}
            xs = sorted(levels, key=int)
            ax.plot([int(x) for x in xs], [levels[x] for x in xs], "o-", label=model,
                    color=SIDE_COLOURS.get(model))
        ax.set_title(corruption, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(corruptions):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("severity (0 = clean)")
    fig.supylabel("accuracy")
    return save_figure(fig, path)


def plot_confusions(confusions: Mapping[str, Sequence[Sequence[int]]], classes: Sequence[str],
                    path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrices side by side, counts written in the cells.

    Args:
        confusions: model -> confusion matrix (rows true, columns predicted).
        classes: class names.
        path: PNG to write.
    Returns:
        The path.
    """
    fig, axes = plt.subplots(1, len(confusions), figsize=(3.6 * len(confusions), 3.4), squeeze=False)
    for ax, (model, cm) in zip(axes[0], confusions.items()):
        cm = np.asarray(cm)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        if len(classes) <= 20:
            for (i, j), count in np.ndenumerate(cm):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black")
            ax.set_xticks(range(len(classes)), classes, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    return save_figure(fig, path)


def plot_learning_curves(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """Validation accuracy against training wall time for each model.

    Args:
        curves: model -> points with ``elapsed_s`` and ``val_accuracy``.
        path: PNG to write.
    Returns:
        The path.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for model, points in curves.items():
        ax.plot([p["elapsed_s"] for p in points], [p["val_accuracy"] for p in points], "o-", label=model,
                color=SIDE_COLOURS.get(model), markersize=3)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Learning curves")
    return save_figure(fig, path)


def _show(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_ideal_inputs(ideals: Mapping[str, tuple[torch.Tensor, Sequence[float]]], class_names: Sequence[str],
                      path: str | os.PathLike) -> Path:
    """Grid of class "ideal" inputs: one row per model, one column per class.

    Args:
        ideals: model -> (images (k, 3, H, W) in [0, 1], probability of the class on each).
        class_names: the names of the k visualised classes.
        path: PNG to write.
    Returns:
        The path.
    """
    fig, axes = plt.subplots(len(ideals), len(class_names), figsize=(1.6 * len(class_names), 1.8 * len(ideals)),
                             squeeze=False)
    for row, (model, (images, probs)) in zip(axes, ideals.items()):
        for ax, image, name, prob in zip(row, images, class_names, probs):
            _show(ax, image, f"{model}\n'{name}' p={prob:.2f}")
    return save_figure(fig, path)


def plot_adversarial_pairs(pairs: Mapping[str, Sequence[Mapping]], class_names: Sequence[str],
                           path: str | os.PathLike) -> Path:
    """Original | adversarial | amplified difference, one row per (model, example).

    Args:
        pairs: model -> results of :func:`pipeline.evaluation.interpret.adversarial_pair`.
        class_names: all class names (indexed by label).
        path: PNG to write.
    Returns:
        The path.
    """
    rows = [(model, pair) for model, items in pairs.items() for pair in items]
    fig, axes = plt.subplots(len(rows), 3, figsize=(5.4, 1.9 * len(rows)), squeeze=False)
    for (ax0, ax1, ax2), (model, pair) in zip(axes, rows):
        delta = pair["adversarial"] - pair["original"]
        scale = max(float(delta.abs().max()), 1e-8)
        _show(ax0, pair["original"], f"{model}: '{class_names[pair['label']]}'")
        verdict = f"-> '{class_names[pair['predicted']]}'" if pair["flipped"] else "(no flip)"
        _show(ax1, pair["adversarial"], f"{verdict} in {pair['steps']} steps")
        _show(ax2, 0.5 + 0.5 * delta / scale, f"diff x{0.5 / scale:.0f}, Linf={pair['linf']:.3f}")
    return save_figure(fig, path)


def plot_fgsm(fgsm: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Accuracy under FGSM against epsilon (pixel units), one line per model.

    Args:
        fgsm: model -> str(epsilon) -> accuracy.
        path: PNG to write.
    Returns:
        The path.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for model, accs in fgsm.items():
        eps = sorted(accs, key=float)
        ax.plot([float(e) * 255 for e in eps], [accs[e] for e in eps], "o-", label=model, color=SIDE_COLOURS.get(model))
    ax.set_xlabel("FGSM epsilon (grey levels of 255)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Accuracy under a small FGSM attack")
    return save_figure(fig, path)
