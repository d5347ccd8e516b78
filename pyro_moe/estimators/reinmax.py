"""``reinmax``: straight-through with a second-order (Heun) backward pass.

The forward pass is an exact one-hot draw D ~ Categorical(pi_0), pi_0 = softmax(theta) (Gumbel-max),
as in ``st-gumbel``. The backward pass replaces straight-through's softmax Jacobian by

    pi_1 = (D + softmax(theta / tau)) / 2,
    d w / d theta = 2 J(pi_1) - J(pi_0) / 2,     J(p) = diag(p) - p p^T,

i.e. w = D + pi_2 - stop(pi_2) with pi_2 = 2 softmax(stop(log pi_1 - theta) + theta) - pi_0 / 2.
Liu et al. show straight-through is the forward Euler step of an integral whose exact value is the
gradient of the discrete objective, and this is Heun's (trapezoid) step: second-order accurate
where straight-through is first-order. Still biased for the discrete ELBO (the bias is that of a
second-order approximation of f between D and the other categories; it vanishes when f is
quadratic in the one-hot gate); the categorical KL enters exactly, as in ``st-gumbel`` (the model's
``cluster`` site scores the analytic -KL(q || p)). The authors recommend tau >= 1.

References:
    1. L. Liu, C. Dong, X. Liu, B. Yu, J. Gao, "Bridging Discrete and Backpropagation:
       Straight-Through and Beyond", NeurIPS 2023.
"""

from __future__ import annotations

import torch
from pyro import distributions as dist

from pyro_moe.estimators.relaxed import RelaxedEstimator, RelaxedGate, gumbel_like, one_hot
from pyro_moe.registry import ESTIMATORS


class ReinMaxGate(RelaxedGate):
    """One-hot D forward, ReinMax's second-order gradient backward (no density: KL form)."""

    def __init__(self, logits: torch.Tensor, temperature: float) -> None:
        super().__init__(logits, temperature, "hard", density=False)

    def expand(self, batch_shape, _instance=None) -> ReinMaxGate:
        return ReinMaxGate(
            self.logits.expand(torch.Size(batch_shape) + self.event_shape), self.temperature
        )

    def rsample(self, sample_shape=()) -> torch.Tensor:
        theta = self.logits.expand(torch.Size(sample_shape) + self.logits.shape)
        hard = one_hot((theta + gumbel_like(theta)).argmax(-1), theta.shape[-1], theta.dtype)
        pi0 = theta.softmax(-1)
        pi1 = ((hard + (theta / self.temperature).softmax(-1)) / 2).detach()
        pi1 = torch.softmax(pi1.log() - theta.detach() + theta, -1)  # value pi_1, Jacobian J(pi_1)
        pi2 = 2 * pi1 - pi0 / 2
        w = hard + (pi2 - pi2.detach())
        return w


@ESTIMATORS.register("reinmax")
class ReinMax(RelaxedEstimator):
    """Straight-through with Heun's second-order backward pass (Liu et al. 2023); biased."""

    name = "reinmax"
    mode = "hard"
    bias = (
        "second-order (Heun) approximation of the discrete gradient: smaller than "
        "straight-through's first-order error, not zero"
    )

    def guide_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        state["posterior_logits"] = logits
        return ReinMaxGate(logits, self.temperature())
