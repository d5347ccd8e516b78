"""Figures of a 1-D regression mixture of experts: the predictive density with each expert's mean,
and the gate. Each function draws into ``ax`` (or a new figure) and returns the figure; figures
are built without pyplot, so they work headless and in notebooks alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pyro_moe.data import Dataset

COLORS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]


def axes_or_new(ax: Axes | None, figsize=(6, 4)) -> tuple[Figure, Axes]:
    """``ax`` with its figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _grid(data: Dataset, num: int = 300) -> torch.Tensor:
    x = torch.cat([data.train.x, data.test.x])[:, 0]
    pad = 0.05 * float(x.max() - x.min())
    return torch.linspace(float(x.min()) - pad, float(x.max()) + pad, num)[:, None].to(x)


@torch.no_grad()
def plot_regression_fit(model: Any, data: Dataset, ax: Axes | None = None) -> Figure:
    """1-D regression: log predictive density p(y|x) as a heat map, the test points, each expert's
    mean (line opacity = its gate probability) and the predictive mean."""
    fig, ax = axes_or_new(ax)
    xs = _grid(data)
    y_all = torch.cat([data.train.y, data.test.y])[:, 0]
    pad = 0.1 * float(y_all.max() - y_all.min())
    ys = torch.linspace(float(y_all.min()) - pad, float(y_all.max()) + pad, 200).to(xs)
    xx, yy = torch.meshgrid(xs[:, 0], ys, indexing="ij")
    log_density = model.log_likelihood(xx.reshape(-1, 1), yy.reshape(-1, 1)).reshape(xx.shape)
    extent = (float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max()))
    image = ax.imshow(
        log_density.T.clamp_min(-8).cpu().numpy(),
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap="Blues",
    )
    fig.colorbar(image, ax=ax, label="log p(y|x)")
    ax.scatter(
        data.test.x[:, 0].cpu(), data.test.y[:, 0].cpu(), s=5, c="k", alpha=0.6, label="test data"
    )
    gate = model.gate_log_probs(xs).exp().cpu().numpy()
    means = model.experts(xs)[..., 0].cpu().numpy()  # [G, K]
    x_np = xs[:, 0].cpu().numpy()
    for k in range(means.shape[1]):
        colors = np.zeros((len(x_np), 4))
        colors[:, :3] = _rgb(COLORS[k % len(COLORS)])
        colors[:, 3] = gate[:, k]
        ax.scatter(x_np, means[:, k], c=colors, s=3)
        ax.plot([], [], color=COLORS[k % len(COLORS)], label=f"expert {k} mean (opacity: gate)")
    ax.plot(x_np, model.predict(xs)[:, 0].cpu().numpy(), "r--", lw=1, label="E[y|x]")
    ax.set(
        xlabel="x", ylabel="y", title="predictive density and experts", ylim=(extent[2], extent[3])
    )
    ax.legend(loc="best", fontsize="small", markerscale=3)
    return fig


@torch.no_grad()
def plot_gate(model: Any, data: Dataset, ax: Axes | None = None) -> Figure:
    """Gate probabilities p(c = k|x) over a grid of 1-D inputs."""
    fig, ax = axes_or_new(ax, figsize=(6, 2.5))
    xs = _grid(data)
    gate = model.gate_log_probs(xs).exp().cpu().numpy()
    x_np = xs[:, 0].cpu().numpy()
    ax.stackplot(
        x_np,
        gate.T,
        colors=COLORS[: gate.shape[1]],
        alpha=0.7,
        labels=[f"p(c={k}|x)" for k in range(gate.shape[1])],
    )
    ax.set(
        xlabel="x", ylabel="gate probability", ylim=(0, 1), xlim=(x_np[0], x_np[-1]), title="gate"
    )
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_regression_run(model: Any, data: Dataset) -> Figure:
    """Two panels: the fit (:func:`plot_regression_fit`) above the gate (:func:`plot_gate`)."""
    fig = Figure(figsize=(7, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.5, 1])
    plot_regression_fit(model, data, top)
    plot_gate(model, data, bottom)
    return fig


def _rgb(name: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(name)
