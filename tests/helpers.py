"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from pyro_moe.data import split_arrays
from pyro_moe.registry import GUIDES, MODELS


def tiny_data(task: str = "regression", n: int = 40, d: int = 2, classes: int = 3, seed: int = 0):
    """A small random data set (float64 when that is the default dtype)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if task == "regression":
        y = x.sum(-1, keepdim=True) + 0.3 * torch.randn(n, 1, generator=g)
    else:
        y = torch.randint(0, classes, (n,), generator=g)
    return split_arrays(
        "tiny", task, x, y, seed=seed, num_classes=classes if task != "regression" else None
    )


def tiny_moe(data, guide: str = "none", **options):
    """A MoE with random parameters for ``data``, and its guide."""
    model = MODELS["moe"].from_data(data, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    return model, GUIDES[guide](model)
