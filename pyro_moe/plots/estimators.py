"""Figures of the estimator comparison (:mod:`pyro_moe.compare`): bias and variance bars per
estimator and parameter group, SNR over training, and the validation objective against wall-clock
seconds. Built without pyplot (headless and notebooks alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _fig(ncols: int = 1, width: float = 6.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width * ncols, 4), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_bias_variance(rows: list[dict[str, Any]]) -> Figure:
    """Grouped log-scale bars: bias (with its noise floor) and trace variance per group."""
    groups = [g for g in dict.fromkeys(r["group"] for r in rows) if g != "all"]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    fig, (ax_bias, ax_var) = _fig(2)
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(names))
    for i, group in enumerate(groups):
        by = {r["estimator"]: r for r in rows if r["group"] == group}
        bias = [max(by[n]["bias"], 1e-12) for n in names]
        noise = [max(by[n]["bias_noise"], 1e-12) for n in names]
        var = [max(by[n]["variance"], 1e-12) for n in names]
        ax_bias.bar(x + i * width, bias, width, label=group)
        ax_bias.scatter(x + i * width, noise, marker="_", color="k", s=60)
        ax_var.bar(x + i * width, var, width, label=group)
    for ax, title in ((ax_bias, "bias vs exact gradient (- : noise floor)"), (ax_var, "variance")):
        ax.set_yscale("log")
        ax.set_xticks(x + 0.4 - width / 2, names, rotation=45, ha="right")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return fig


def plot_snr_over_training(training: list[dict[str, Any]], group: str = "all") -> Figure:
    """Mean per-coordinate SNR of each estimator's gradient after every epoch."""
    fig, (ax,) = _fig()
    for name in dict.fromkeys(r["estimator"] for r in training):
        pts = [
            (r["epoch"], r["snr"])
            for r in training
            if r["estimator"] == name and r["group"] == group
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"mean SNR ({group})")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def plot_objective_vs_time(training: list[dict[str, Any]]) -> Figure:
    """Validation negative ELBO (exact over the gate) against training wall-clock seconds."""
    fig, (ax,) = _fig()
    for name in dict.fromkeys(r["estimator"] for r in training):
        pts = sorted(
            {(r["wall_seconds"], r["valid_loss"]) for r in training if r["estimator"] == name}
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".", label=name)
    ax.set_xlabel("training wall-clock seconds")
    ax.set_ylabel("validation loss (-ELBO per point)")
    ax.legend(fontsize=8)
    return fig


def save_figures(out: Path, rows: list[dict[str, Any]], training: list[dict[str, Any]]) -> None:
    """bias_variance.png, snr.png, objective_vs_time.png in ``out``."""
    plot_bias_variance(rows).savefig(out / "bias_variance.png", dpi=100)
    plot_snr_over_training(training).savefig(out / "snr.png", dpi=100)
    plot_objective_vs_time(training).savefig(out / "objective_vs_time.png", dpi=100)
