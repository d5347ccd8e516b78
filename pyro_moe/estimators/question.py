"""``question``: the estimator proposed in a question on the Jensen bound for
mixtures of experts, kept to show with numbers where it is wrong.

The question samples g ~ Gumbel, forms beta = softmax((log alpha + g) / lambda) from the gate
alpha = p(z|x, phi), and proposes

    grad_phi ~ (1/n) sum_i log p(y | onehot(beta_i), x, theta) grad_phi beta_i,
    grad_theta ~ (1/n) sum_i grad_theta log p(y | onehot(beta_i), x, theta).

We read ``log p(y|onehot(beta)) grad_phi beta`` as the coordinate of the chosen expert,
f(z) grad_phi beta_z with z = argmax beta, the only reading that does not vanish identically
(sum_k beta_k = 1 so sum_k grad beta_k = 0). onehot(beta) is an exact sample of p(z|x) (Gumbel-max),
so the value and the theta-gradient are unbiased for the Jensen bound sum_z p(z|x) log p(y|z, x);
the phi-gradient is not: the score grad log alpha_z is replaced by grad beta_z, which is neither
the score nor a reparameterisation gradient. Its expectation differs from the exact gradient at
every temperature (tests/test_estimators.py measures by how much).

With a guide other than the gate the same form is applied to q(c|...) and the ELBO integrand f.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import distributions as dist

from pyro_moe.estimators.relaxed import GumbelArgmax, RelaxCluster, TemperedEstimator
from pyro_moe.estimators.sampled import Costs
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("question")
class Question(TemperedEstimator):
    """The question's proposal: f(argmax beta) * grad beta_argmax (biased; kept to measure it)."""

    name = "question"
    unbiased_for = None
    bias = "the score grad log q(c) replaced by grad beta_c: biased for the ELBO at every tau"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._stash: dict = {}

    def _guide_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        return GumbelArgmax(logits, self.temperature(), state)

    def handler(self):
        self._stash = {}
        return (lambda fn: fn), RelaxCluster(
            self._guide_site, self._stash, self.sites, per_site=True
        )

    def objective(self, costs: Costs, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        beta = sum(_per_point(site["beta"], costs.f.dim()) for site in self._stash.values())
        value = costs.f.sum(-1).mean(-1)
        surrogate = value + (costs.f.detach() * beta).sum(-1).mean(-1)
        return value, surrogate


def _per_point(beta: torch.Tensor, dim: int) -> torch.Tensor:
    """A site's ``[E, S, ..., N]`` weights summed to ``[E, S, N]``."""
    while beta.dim() < dim:
        beta = beta.unsqueeze(0)
    if beta.dim() > 3:
        beta = beta.sum(dim=tuple(range(2, beta.dim() - 1)))
    return beta
