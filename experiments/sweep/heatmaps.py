"""The sweep's heatmaps: accuracy and attack success rate, attack x aggregator, one figure per
slice of the grid."""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING

import numpy as np

from experiments.sweep.tables import _slice_title, matrix

if TYPE_CHECKING:
    from experiments.sweep.runner import SweepResult


def heatmap_figure(result: SweepResult, s: dict):
    """A matplotlib figure for slice ``s``: accuracy and (when any cell has one) attack success
    rate, attack (rows) x aggregator (columns), each cell annotated with mean and std over seeds."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("accuracy", "test accuracy", "viridis")]
    if any("attack_success_rate" in r["final"] for r in result.cells):
        metrics.append(("attack_success_rate", "attack success rate", "magma_r"))
    attacks, rules, _, _ = matrix(result, s, "accuracy")
    labels = [a.replace("+", "\n+") for a in attacks]  # a chain's attacks on lines of their own
    label_width = 0.5 + 0.07 * max(len(line) for label in labels for line in label.split("\n"))  # inches at 8 pt
    width = 1.2 + 0.95 * len(rules)
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(label_width + width * len(metrics), 1.0 + 0.55 * len(attacks)),
        squeeze=False,
        sharey=True,  # the attack names once, left of the first panel
    )
    for ax, (metric, title, cmap) in zip(axes[0], metrics):
        _, _, mean, std = matrix(result, s, metric)
        colors = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")  # missing / invalid cells in grey
        image = ax.imshow(np.ma.masked_invalid(mean), cmap=colors, vmin=0.0, vmax=1.0, aspect="auto")
        for i, j in itertools.product(range(len(attacks)), range(len(rules))):
            text = "n/a" if np.isnan(mean[i, j]) else f"{mean[i, j]:.2f}\n±{std[i, j]:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="black" if np.isnan(mean[i, j]) or (mean[i, j] > 0.5) == (cmap == "viridis") else "white",
            )
        ax.set_xticks(range(len(rules)), rules, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(attacks)), labels, fontsize=8)
        ax.set_xlabel("aggregator")
        if ax is axes[0][0]:
            ax.set_ylabel("attack")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    base = result.spec.base
    fig.suptitle(f"{base.dataset} / {base.model}: {_slice_title(s)} ({len(result.spec.seeds)} seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # the title above the panels' own
    return fig
