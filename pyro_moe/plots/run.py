"""The figures a run folder gets: the training history, and each model's own figures.

:func:`save_run_figures` is what :func:`pyro_moe.experiment.run_experiment` calls after training.
"""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pyro_moe.data import Dataset
from pyro_moe.plots.clustering import cluster_figures
from pyro_moe.plots.regression import axes_or_new, plot_regression_run


def plot_history(
    history: list[dict[str, Any]], keys: list[str] | None = None, ax: Axes | None = None
) -> Figure:
    """Training loss and validation metrics against the epoch."""
    fig, ax = axes_or_new(ax)
    keys = keys or [k for k in history[0] if k == "train_loss" or k.startswith("valid_")]
    epochs = [row["epoch"] for row in history]
    for key in keys:
        ax.plot(epochs, [row[key] for row in history], label=key)
    ax.set(xlabel="epoch", title="training history")
    ax.legend(fontsize="small")
    return fig


def save_run_figures(run: Any, model: Any, data: Dataset, history: list[dict[str, Any]]) -> list:
    """Write the figures that fit the model and data into the run folder; returns their paths."""
    figures = {}
    if history:
        figures["training"] = plot_history(history)
    one_d = data.task == "regression" and data.input_dim == 1 and data.output_dim == 1
    if one_d and model.gate_log_probs(data.train.x[:1]) is not None:
        figures["fit"] = plot_regression_run(model, data)
    if model.predict_cluster(data.test.x[:1]) is not None:
        figures.update(cluster_figures(model, data))
    paths = []
    for name, fig in figures.items():
        paths.append(run.save_figure(name, fig, dpi=110))  # atomic: never half a PNG
    return paths
