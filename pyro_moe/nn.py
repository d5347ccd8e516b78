"""Small network pieces shared by models and guides.

``BatchedLinear`` / ``BatchedMLP`` hold K independent networks in one set of tensors, so all experts
run in one ``einsum``: ``[N, D] -> [N, K, out]`` (a shared input) or
``[..., K, D] -> [..., K, out]`` (an input per expert); ``selected(x, e)`` runs network ``e`` on
each row of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_moe.errors import ConfigError
from pyro_moe.shapes import broadcast_shapes

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (tanh, relu, elu, softplus, sigmoid)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], act: str = "tanh") -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) - act - ... - Linear(sizes[-2], sizes[-1])`` (no final act)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class BatchedLinear(nn.Module):
    """K affine maps: ``y[n, k] = x[n] @ W[k] + b[k]`` (or ``x[..., k] @ W[k] + b[k]``)."""

    def __init__(self, in_features: int, out_features: int, num_components: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(
            torch.empty(num_components, in_features, out_features).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(num_components, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [N, D] shared input
            return torch.einsum("nd,kdo->nko", x, self.weight) + self.bias
        return torch.einsum("...kd,kdo->...ko", x, self.weight) + self.bias  # [..., K, D]

    def selected(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``y[...] = x[...] @ W[e[...]] + b[e[...]]``: map ``e`` on each row; ``x`` is
        ``[..., D]`` and the integer ``e`` broadcasts against ``x.shape[:-1]``.

        The dims where ``e`` has size 1 (e.g. the data plate of an enumerated ``[K, 1]``) are
        gathered into the rows of one matrix product per entry of ``e``, so the weights are
        read ``e.numel()`` times and never copied per row."""
        shape = broadcast_shapes(x.shape[:-1], e.shape)
        e = e.reshape((1,) * (len(shape) - e.dim()) + e.shape)
        rows = [i for i in range(len(shape)) if e.shape[i] == 1 and shape[i] != 1]
        own = [i for i in range(len(shape)) if i not in rows]
        order = own + rows
        x = x.expand(shape + x.shape[-1:]).permute(*order, len(shape))
        own_shape = [shape[i] for i in own]
        x = x.reshape(*own_shape, -1, x.shape[-1])  # [own..., M, D]
        index = e.permute(*order).reshape(own_shape)  # [own...]
        out = x @ self.weight[index] + self.bias[index].unsqueeze(-2)  # [own..., M, out]
        out = out.reshape(*own_shape, *[shape[i] for i in rows], out.shape[-1])
        inverse = [order.index(i) for i in range(len(shape))]
        return out.permute(*inverse, len(shape))


class BatchedMLP(nn.Module):
    """K independent MLPs with the same layer sizes: ``[N, D] -> [N, K, out]``, or
    ``[..., K, D] -> [..., K, out]`` with an input per network."""

    def __init__(self, sizes: Sequence[int], num_components: int, act: str = "tanh") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BatchedLinear(n_in, n_out, num_components)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x

    def selected(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Network ``e`` applied to ``x``: ``[..., D] -> [..., out]`` (see
        :meth:`BatchedLinear.selected`); the same values as ``forward`` then picking ``e``, at
        1/K of the work when ``e`` has few entries (an enumerated support)."""
        for i, layer in enumerate(self.layers):
            x = layer.selected(x, e)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x
