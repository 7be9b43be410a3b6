"""The evaluation's plot files: CSV tables that ``dvc plots`` renders, and the PNGs of the report.

Inputs: the metrics dict (the very one written to metrics.json), the learning curves and the
interpretation tensors. Outputs, in the plots folder: label_efficiency.csv, robustness.csv,
learning_curves.csv, fgsm.csv and one PNG per figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipeline.common.io import write_text
from pipeline.evaluation.plots import (curve_points, plot_adversarial_pairs, plot_confusions, plot_fgsm,
                                       plot_ideal_inputs, plot_label_efficiency, plot_learning_curves, plot_robustness)

__all__ = ["plot_tables", "write_plots"]


def plot_tables(metrics: Mapping, learning: Mapping[str, Sequence[Mapping]]) -> dict[str, pd.DataFrame]:
    """The long-format tables behind the plots (one row per plotted point).

    Args:
        metrics: the evaluation metrics.
        learning: model -> learning-curve points.
    Returns:
        File stem -> table.
    """
    curve = curve_points(metrics)
    robust = [{"model": m, "corruption": c, "severity": int(s), "accuracy": a}
              for m, table in metrics["robustness"].items() for c, levels in table.items() for s, a in levels.items()]
    curves = [{"model": m, **point} for m, points in learning.items() for point in points]
    fgsm = [{"model": m, "epsilon": float(e), "accuracy": a} for m, accs in metrics["fgsm"].items()
            for e, a in accs.items()]
    # an unlabelled shift set has no robustness rows: the table keeps its columns (DVC declares it)
    return {"label_efficiency": pd.DataFrame(curve),
            "robustness": pd.DataFrame(robust, columns=["model", "corruption", "severity", "accuracy"]),
            "learning_curves": pd.DataFrame(curves), "fgsm": pd.DataFrame(fgsm)}


def write_plots(plots_dir: str | os.PathLike, metrics: Mapping, learning: Mapping[str, Sequence[Mapping]],
                explained: Mapping[str, Mapping], classes: Sequence[str], show: Sequence[int]) -> dict[str, Path]:
    """Write the CSV tables and the PNGs.

    Args:
        plots_dir: the folder to write into.
        metrics: the evaluation metrics.
        learning: model -> learning-curve points.
        explained: model -> output of :func:`pipeline.evaluation.assess.explain`.
        classes: class names.
        show: indices of the visualised classes.
    Returns:
        Figure name -> PNG path (the report's sections).
    """
    out = Path(plots_dir)
    for stem, table in plot_tables(metrics, learning).items():
        write_text(out / f"{stem}.csv", table.to_csv(index=False))
    confusions = {m: scores["confusion"] for m, scores in metrics["models"]["test"].items()}
    return {
        "label_efficiency": plot_label_efficiency(curve_points(metrics), out / "label_efficiency.png"),
        "robustness": plot_robustness(metrics["robustness"], out / "robustness.png", metrics.get("shift_unscored")),
        "confusion": plot_confusions(confusions, classes, out / "confusion.png"),
        "learning_curves": plot_learning_curves(learning, out / "learning_curves.png"),
        "ideal_inputs": plot_ideal_inputs({m: e["ideal"] for m, e in explained.items()},
                                          [classes[c] for c in show], out / "ideal_inputs.png"),
        "adversarial": plot_adversarial_pairs({m: e["pairs"] for m, e in explained.items()}, classes,
                                              out / "adversarial.png"),
        "fgsm": plot_fgsm(metrics["fgsm"], out / "fgsm.png"),
    }
