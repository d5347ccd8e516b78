"""The guide of the Bayesian mixture of experts (:mod:`pyro_moe.models.bayes_moe`).

``auto-normal``: Pyro's ``AutoNormal`` on the global sites only,
q(theta) = prod_j N(u_j; m_j, s_j^2) in the unconstrained space of each site (u = T^-1(theta) with
T the bijection onto the site's support). The ``cluster`` site is hidden from it, so ``enum`` sums
the gate out in the model and the ELBO is
E_q[log p(theta) + sum_n log p(y_n|x_n, theta) - log q(theta)], with the exact marginal
log p(y_n|x_n, theta) inside.

The guide's parameters are created when it is built (one prototype trace of the model on a
one-row input), so the trainer's optimizer and checkpoints see them from the first step.

References:
    1. A. Kucukelbir, D. Tran, R. Ranganath, A. Gelman, D. M. Blei, "Automatic Differentiation
       Variational Inference", JMLR 2017.
"""

from __future__ import annotations

import itertools

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro_moe.models.bayes_moe import BayesianMixtureOfExperts

from pyro_moe.base import PyroGuide
from pyro_moe.registry import GUIDES

_instances = itertools.count()


@GUIDES.register("auto-normal")
class AutoNormalGuide(PyroGuide):
    """Mean-field Normal on the Bayesian MoE's global sites (AutoNormal); the gate is summed out."""

    pyro_name = "bayes_moe_guide"
    samples_cluster = False
    model_types = (BayesianMixtureOfExperts,)

    def __init__(self, model: BayesianMixtureOfExperts, init_scale: float = 0.1) -> None:
        super().__init__(model)
        hidden = poutine.block(model.model, hide=["cluster"])
        self.auto = AutoNormal(hidden, init_scale=init_scale)
        # "$$$" marks the names of module parameters in Pyro's param store (as pyro.module
        # writes them): checkpoints save these with the guide's state_dict, not a second time.
        # A name of its own per guide: a PyroModule takes over a param-store value of its name,
        # so two guides sharing one would start from each other's parameters.
        self.auto._pyro_name = f"{self.pyro_name}$$${next(_instances)}"
        dtype = model.gate_scale.dtype
        x = torch.zeros(1, model.input_dim, dtype=dtype)
        y = (
            torch.zeros(1, dtype=torch.long)
            if model.task == "classification"
            else torch.zeros(1, model.output_dim, dtype=dtype)
        )
        with poutine.block(), torch.random.fork_rng(devices=[]):
            self.auto(x, y)  # creates the variational parameters now, without touching the RNG

    def forward(self, x, y=None, num_data=None):
        return self.auto(x, y, num_data)

    def draw(self) -> dict[str, torch.Tensor]:
        """One draw theta ~ q(theta): ``{site: value}`` (no gradient)."""
        with torch.no_grad(), poutine.block():
            return {k: v.detach() for k, v in self.auto().items()}
