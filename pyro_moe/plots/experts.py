"""Figures of a mixture of VAE experts (:mod:`pyro_moe.models.mixture_of_vaes`): what each expert
generates as training goes on, how the manager shares the data among the experts, and what the
second-level experts of the hierarchical model capture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

#: the width and height of one image cell, inches
CELL = 0.55


def image_side(dim: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``dim`` is a square number of pixels, else None."""
    side = int(round(dim**0.5))
    return (side, side) if side * side == dim else None


def _show(ax, image: np.ndarray) -> None:
    shape = image_side(image.size)
    ax.imshow(image.reshape(shape or (1, image.size)), cmap="Greys_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_expert_samples(samples: np.ndarray, epochs: Sequence[int], title: str = "") -> Figure:
    """The post's figure: a row per epoch, a column per expert, each cell expert k's decoder mean
    at the same code z. ``samples`` is ``[rows, E, D]`` with ``epochs[r]`` the epoch of row r."""
    rows, num_experts = samples.shape[:2]
    height = CELL * rows + 0.9
    fig = Figure(figsize=(CELL * num_experts + 0.8, height))
    axes = fig.subplots(rows, num_experts, squeeze=False)
    fig.subplots_adjust(top=1 - 0.7 / height, bottom=0.2 / height, wspace=0.05, hspace=0.05)
    for r in range(rows):
        for k in range(num_experts):
            _show(axes[r, k], samples[r, k])
            if r == 0:
                axes[r, k].set_title(str(k), fontsize=7)
        axes[r, 0].set_ylabel(f"ep {epochs[r]}", rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title or "samples of each expert (column) after each epoch (row)", fontsize=9)
    return fig


def plot_expert_usage(usage: np.ndarray, epochs: Sequence[int], title: str = "") -> Figure:
    """Each expert's share of the data, (1/N) sum_n q(k|x_n), over training: ``usage`` is
    ``[rows, E]``, stacked."""
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.stackplot(np.asarray(epochs), np.asarray(usage).T, linewidth=0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of the data")
    ax.set_ylim(0, 1)
    ax.set_title(title or "expert usage over training", fontsize=9)
    fig.tight_layout()
    return fig


def plot_subexperts(
    means: np.ndarray, prototypes: np.ndarray, captions: Sequence[Sequence[str]], title: str = ""
) -> Figure:
    """The hierarchical model: a row per top-level expert c; per second-level expert s, the mean
    of the images routed to (c, s) and its decoder mean at z = 0, captioned (e.g. the majority
    digit and count). ``means`` and ``prototypes`` are ``[K, K2, D]``, ``captions`` ``[K][K2]``."""
    k, k2 = means.shape[:2]
    height = CELL * 1.4 * k + 1.0
    fig = Figure(figsize=(max(5.0, CELL * 2.6 * k2 + 1.0), height))
    axes = fig.subplots(k, 2 * k2, squeeze=False)
    fig.subplots_adjust(top=1 - 0.8 / height, bottom=0.2 / height, hspace=0.5)
    for c in range(k):
        for s in range(k2):
            _show(axes[c, s], means[c, s])
            axes[c, s].set_title(captions[c][s], fontsize=6)
            _show(axes[c, k2 + s], prototypes[c, s])
        axes[c, 0].set_ylabel(f"c={c}", rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(
        title
        or "per top-level expert c (rows): the mean test image routed\nto each sub-expert "
        "(caption: majority digit) | each sub-expert's sample at z = 0",
        fontsize=7,
    )
    return fig
