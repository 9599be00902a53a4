"""Plots for the report: singular-value spectra of the candidate convs, with ranks and break-even marked."""

from __future__ import annotations

import math
import os

import numpy as np

from onebyone.report import Report
from onebyone.tables import short_name


def plot_spectra(report: Report, path: str | os.PathLike, max_layers: int = 24) -> int:
    """Write a PNG grid of cumulative-energy curves (one panel per conv with singular values); returns panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report.method == "data"
    layers = [l for l in report.layers if (l.error_curve if data else l.singular_values)][:max_layers]
    if not layers:
        return 0
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, layer in zip(axes.ravel(), layers):
        if data:  # predicted relative output error vs rank, from the calibration statistics
            curve = np.asarray(layer.error_curve)
            ax.plot(np.arange(len(curve)), curve, lw=1)
            if layer.measured_error is not None and layer.rank is not None:
                ax.plot([layer.rank], [layer.measured_error], "o", ms=3, color="black", label="measured")
        for s in ([] if data else layer.singular_values):
            sq = np.asarray(s) ** 2
            ax.plot(np.arange(1, len(sq) + 1), np.cumsum(sq) / max(sq.sum(), 1e-30), lw=1)
        ax.axvline(layer.break_even_rank, color="tab:red", ls="--", lw=1, label="break-even")
        if layer.action == "rewritten":
            ax.axvline(layer.rank, color="tab:green", lw=1, label=f"rank {layer.rank}")
        ax.set_title(short_name(layer.name, 36), fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    what = "predicted output error vs rank (calibration data)" if data else "energy kept vs rank"
    fig.suptitle(f"{report.model}: {what} ({report.policy})", fontsize=10)
    fig.supxlabel("rank (per group)", fontsize=8)
    fig.supylabel("relative output error" if data else "fraction of squared singular values", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(layers)

