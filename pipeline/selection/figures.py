"""The figure people look at after ``tlops select``: scores with their intervals against cost."""

from __future__ import annotations

import os

from pipeline.common.figures import plt, save_figure

__all__ = ["plot_selection"]


def plot_selection(selection: dict, target: str | os.PathLike) -> None:
    """Plot linear-probe / kNN accuracy vs GFLOPs and LogME vs scoring time, with 95% intervals.

    Args:
        selection: the selection.json content (``ranking``, ``selected``, ``removed``).
        target: PNG path (written atomically).
    """
    fig, (acc_ax, logme_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for row in selection["ranking"]:
        picked = row["name"] == selection["selected"]
        for ax, x, key, marker in ((acc_ax, row["gflops"], "linear_probe", "o"), (acc_ax, row["gflops"], "knn", "s"),
                                   (logme_ax, row["cost"]["total_s"], "logme", "o")):
            score = row["scores"][key]
            # A percentile interval need not contain the point estimate (LogME on resamples with repeats).
            err = [[max(0.0, score["value"] - score["ci95"][0])], [max(0.0, score["ci95"][1] - score["value"])]]
            ax.errorbar([x], [score["value"]], yerr=err, fmt=marker, capsize=3, color="C3" if picked else "C0",
                        mfc="none" if key == "knn" else None)
        acc_ax.annotate(f"#{row['rank']} {row['name']}", (row["gflops"], row["scores"]["linear_probe"]["value"]),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
        logme_ax.annotate(row["name"], (row["cost"]["total_s"], row["scores"]["logme"]["value"]),
                          textcoords="offset points", xytext=(5, 5), fontsize=8)
    acc_ax.set(xlabel=f"GFLOPs per image at {selection['image_size']} px", ylabel="out-of-fold accuracy",
               title="linear probe (filled) and kNN (hollow), 95% CI")
    logme_ax.set(xlabel="scoring cost, s (features + scores)", ylabel="LogME", title="LogME, 95% CI")
    removed = ", ".join(f"{r['name']} ({r['status']})" for r in selection["removed"]) or "none"
    fig.suptitle(f"selected: {selection['selected']} (red); removed: {removed}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, target, tight=False)
