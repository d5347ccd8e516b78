"""Figures for the clustering models (GMM, VaDE, DMVAE): latent scatter, per-cluster samples,
reconstructions and the cluster/class confusion matrix. Built without pyplot (headless-safe);
each function returns a ``Figure``. :func:`cluster_figures` is the hook that
:func:`pyro_moe.plots.save_run_figures` calls for models with ``predict_cluster``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_moe.data import Dataset


def _figure(figsize=(5, 4)) -> Figure:
    return Figure(figsize=figsize, layout="constrained")


def _image_shape(data: Dataset | None, dim: int) -> tuple[int, int] | None:
    shape = (data.meta.get("image_shape") if data is not None else None) or None
    return tuple(shape) if shape and int(np.prod(shape)) == dim else None


@torch.no_grad()
def latent_points(model: Any, x: torch.Tensor, max_points: int = 2000, seed: int = 0) -> np.ndarray:
    """2-D coordinates of ``x``: the encoder means if the latent is 2-D, else t-SNE of them
    (scikit-learn); the data itself for models without an encoder (GMM)."""
    x = x[:max_points]
    z = model.embed(x)
    z = (x if z is None else z).cpu().numpy()
    if z.shape[1] == 2:
        return z
    if z.shape[1] == 1:
        return np.concatenate([z, np.zeros_like(z)], 1)
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(z) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(z)


def plot_latent(model: Any, x: torch.Tensor, max_points: int = 2000) -> Figure:
    """Latent scatter (t-SNE when wider than 2-D) coloured by the inferred cluster."""
    points = latent_points(model, x, max_points)
    clusters = model.predict_cluster(x[:max_points]).cpu().numpy()
    fig = _figure()
    ax = fig.add_subplot()
    scatter = ax.scatter(points[:, 0], points[:, 1], c=clusters, cmap="tab10", s=6, vmin=0, vmax=9)
    encoded = model.embed(x[:1])
    wide = (x if encoded is None else encoded).shape[1] > 2
    space = "the inputs" if encoded is None else "the latent means"
    ax.set_title((f"t-SNE of {space}" if wide else space) + ", coloured by cluster")
    fig.colorbar(scatter, ax=ax, label="cluster")
    return fig


def plot_cluster_samples(model: Any, data: Dataset | None = None, per_cluster: int = 8) -> Figure:
    """Samples of every cluster: an image grid (one row per cluster) for image data, else the
    samples over the data in input space (first two dims)."""
    samples = model.cluster_samples(per_cluster).cpu().numpy()
    k = samples.shape[0]
    shape = _image_shape(data, samples.shape[-1])
    if shape is None:
        fig = _figure()
        ax = fig.add_subplot()
        if data is not None:
            ax.scatter(*data.train.x[:, :2].cpu().numpy().T, s=3, c="0.8")
        for c in range(k):
            ax.scatter(samples[c, :, 0], samples[c, :, 1], s=12, color=f"C{c % 10}", label=str(c))
        ax.set_title("samples from each cluster")
        return fig
    fig = _figure((per_cluster * 0.6 + 0.5, k * 0.6 + 0.5))
    axes = fig.subplots(k, per_cluster, squeeze=False)
    for c in range(k):
        for j in range(per_cluster):
            axes[c, j].imshow(samples[c, j].reshape(shape), cmap="gray", vmin=0, vmax=1)
            axes[c, j].axis("off")
    fig.suptitle("samples from each cluster (rows)")
    return fig


def plot_reconstructions(model: Any, x: torch.Tensor, data: Dataset | None = None, n: int = 8):
    """Inputs (top) and their reconstructions f(mu(x)) (bottom)."""
    x = x[:n]
    recon = model.reconstruct(x).cpu().numpy()
    x = x.cpu().numpy()
    shape = _image_shape(data, x.shape[-1])
    if shape is None:
        fig = _figure()
        ax = fig.add_subplot()
        ax.scatter(x[:, 0], x[:, 1], label="input", s=12)
        ax.scatter(recon[:, 0], recon[:, 1], label="reconstruction", s=12, marker="x")
        ax.legend()
        return fig
    fig = _figure((len(x) * 0.7, 1.6))
    axes = fig.subplots(2, len(x), squeeze=False)
    for j in range(len(x)):
        for row, img in enumerate((x[j], recon[j])):
            axes[row, j].imshow(img.reshape(shape), cmap="gray", vmin=0, vmax=1)
            axes[row, j].axis("off")
    fig.suptitle("inputs (top) and reconstructions (bottom)")
    return fig


def confusion(truth: Any, predicted: Any) -> np.ndarray:
    """Counts ``[clusters, classes]`` with clusters reordered by the Hungarian best match."""
    from scipy.optimize import linear_sum_assignment

    t, p = np.asarray(truth), np.asarray(predicted)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    order = list(rows[np.argsort(cols)]) + [r for r in range(len(table)) if r not in rows]
    return table[order]


def plot_confusion(truth: Any, predicted: Any) -> Figure:
    """Cluster x class counts, clusters matched to classes (diagonal = agreement)."""
    table = confusion(truth, predicted)
    fig = _figure()
    ax = fig.add_subplot()
    image = ax.imshow(table, cmap="Blues")
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster (matched order)")
    fig.colorbar(image, ax=ax)
    return fig


def cluster_figures(model: Any, data: Dataset, max_points: int = 2000) -> dict[str, Figure]:
    """The figures that fit ``model``: latent, samples, reconstructions, confusion."""
    x = data.test.x
    figures = {"latent": plot_latent(model, x, max_points)}
    if model.cluster_samples(1) is not None:
        figures["cluster_samples"] = plot_cluster_samples(model, data)
    if model.reconstruct(x[:1]) is not None:
        figures["reconstructions"] = plot_reconstructions(model, x, data)
    if data.test.labels is not None:
        figures["confusion"] = plot_confusion(
            data.test.labels.cpu().numpy(), model.predict_cluster(x).cpu().numpy()
        )
    return figures
