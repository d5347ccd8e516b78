"""Figures for gated mixtures of experts on 2-D inputs (``shells``): data, gate partitions, fits.

Each function draws into a given matplotlib ``Axes`` (or a new one) and returns it; none saves.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from pyro_moe.data import Dataset


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(4, 4))[1]


def plot_data(data: Dataset, ax=None, split: str = "train"):
    """2-D inputs coloured by the target y, true shells outlined by their cluster labels."""
    ax = _axes(ax)
    part = getattr(data, split)
    points = ax.scatter(part.x[:, 0], part.x[:, 1], c=part.y[:, 0], s=6, cmap="viridis")
    plt.colorbar(points, ax=ax, label="y")
    ax.set(title=f"{data.name}: inputs coloured by y", aspect="equal")
    return ax


@torch.no_grad()
def plot_gate_partition(model, data: Dataset, ax=None, title: str = "", resolution: int = 150):
    """The gate's most probable expert over a grid of the input plane (model.gate_log_probs),
    with the training points on top in black."""
    ax = _axes(ax)
    x = data.train.x
    low, high = x.min(0).values - 0.3, x.max(0).values + 0.3
    g0, g1 = torch.meshgrid(
        torch.linspace(low[0], high[0], resolution),
        torch.linspace(low[1], high[1], resolution),
        indexing="ij",
    )
    grid = torch.stack([g0.flatten(), g1.flatten()], -1).to(x.dtype)
    logits = model.gate_log_probs(grid)
    choice = logits.argmax(-1).reshape(resolution, resolution)
    ax.contourf(g0, g1, choice, levels=model.num_components, cmap="Pastel1", alpha=0.9)
    ax.scatter(x[:, 0], x[:, 1], s=2, c="k")
    ax.set(title=title or f"{type(model).__name__}: argmax gate", aspect="equal")
    return ax


@torch.no_grad()
def plot_fit(model, data: Dataset, ax=None, title: str = ""):
    """Test targets against the predictive mean, coloured by the expert the gate prefers."""
    ax = _axes(ax)
    x, y = data.test.x, data.test.y[:, 0]
    pred = model.predict(x)[:, 0]
    logits = model.gate_log_probs(x)
    ax.scatter(y, pred, c=logits.argmax(-1), s=6, cmap="Set1")
    line = [float(y.min()), float(y.max())]
    ax.plot(line, line, "k--", lw=1)
    mse = torch.mean((pred - y) ** 2).item()
    ax.set(xlabel="true y", ylabel="predicted E[y|x]", title=title or f"test MSE {mse:.3g}")
    return ax
