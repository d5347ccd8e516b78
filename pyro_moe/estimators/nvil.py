"""``nvil``: the score function with a learned, input-dependent baseline network.

    grad ELBO ~ (f - b_psi(x, y)) grad log q(c) + grad~ f,    f = log p(x, y, c) - log q(c),
    psi <- argmin E[(f - b_psi(x, y))^2]     (trained alongside, on the same loss)

per data point, grad~ f being f's gradient without the zero-mean term -grad log q(c) (the form of
``reinforce`` and ``rloo``; ``zero_mean_term=True`` keeps it, see
:func:`~pyro_moe.estimators.sampled.score_surrogate`). ``b_psi`` is a small MLP on the model's
inputs (and targets, where the model has them), built when the estimator is checked against a
guide. It never sees c, so the estimate stays unbiased for any psi; a good psi removes most of the
variance. The baseline regresses the unscaled per-point signal, so it serves minibatches of any
size. (Mnih & Gregor also centre and rescale the signal by running moments; here the network's
bias absorbs the centring.)

References:
    1. A. Mnih, K. Gregor, "Neural Variational Inference and Learning in Belief Networks",
       ICML 2014.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.sampled import Costs, SampledEstimator, score_surrogate
from pyro_moe.nn import mlp
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("nvil")
class Nvil(SampledEstimator):
    """Score function with a learned input-dependent baseline network (Mnih & Gregor 2014)."""

    name = "nvil"

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        hidden_dim: int = 32,
        zero_mean_term: bool = False,
    ) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.zero_mean_term = bool(zero_mean_term)
        if hidden_dim < 1:
            raise ConfigError(f"nvil hidden_dim must be >= 1, got {hidden_dim}")
        self.hidden_dim = hidden_dim
        self.baseline: nn.Module | None = None
        self.classes: int | None = None

    def check(self, guide: nn.Module) -> None:
        super().check(guide)
        if self.baseline is None:
            target = getattr(guide, "target", None)
            if target is None:
                raise ConfigError(
                    "nvil sizes its baseline network from the model's input_dim: it needs a "
                    "library guide (one with .target), not a plain function"
                )
            self.build_baseline(target)

    def build_baseline(self, model: nn.Module) -> None:
        """b_psi: an MLP on [flattened x, y (one-hot for classes)] -> one number per point."""
        input_dim, output_dim = int(model.input_dim), int(model.output_dim or 0)
        if input_dim < 1:
            raise ConfigError("nvil needs a model with an `input_dim` to size its baseline network")
        if model.task == "classification":
            self.classes = output_dim
        dtype = next(model.parameters()).dtype
        self.baseline = mlp([input_dim + output_dim, self.hidden_dim, 1], "tanh").to(dtype)
        self.output_dim = output_dim

    def features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        parts = [x.reshape(x.shape[0], -1)]
        if self.output_dim:
            if y is None:
                parts.append(x.new_zeros(x.shape[0], self.output_dim))
            elif self.classes:
                parts.append(F.one_hot(y, self.classes).to(x.dtype))
            else:
                parts.append(y.reshape(y.shape[0], -1).to(x.dtype))
        return torch.cat(parts, -1)

    def objective(self, costs: Costs, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.baseline is None:
            raise ConfigError("nvil's baseline network is built by estimator.check(guide) first")
        x, y = args[0], args[1] if len(args) > 1 else None
        b = self.baseline(self.features(x, y))[..., 0]  # [N], unscaled
        value, surrogate = score_surrogate(costs, costs.scale * b.detach(), self.zero_mean_term)
        signal = costs.f.detach() / costs.scale
        fit = costs.scale * ((signal - b) ** 2).sum(-1).mean(-1)  # [E]
        return value, surrogate - fit
