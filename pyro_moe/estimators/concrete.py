"""``concrete``: the relaxed ELBO with relaxed (Concrete) densities in both model and guide.

The discrete c is replaced by a relaxed one-hot w = exp(y), y ~ ExpConcrete(tau, logits_q), and

    ELBO_tau = E_y[ log p(x, y | w) + log ExpConcrete(y | tau, logits_p)
                   - log ExpConcrete(y | tau, logits_q) ]

is maximised by the reparameterisation gradient. Both densities are evaluated on the log-space
sample y (never log(w), which underflows at low temperature). The relaxed objective is not the
discrete ELBO, and its gradient is a biased estimate of the ELBO's. For the likelihood's
parameters the bias shrinks as tau -> 0, at the cost of variance. For the prior's logits a_p (the
MoE gate with a separate posterior guide) it does not move with tau at all: with
y = log_softmax((a_q + g) / tau),

    d/da_p log ExpConcrete(y | tau, a_p) = 1 - K softmax(a_p - tau y) = 1 - K softmax(a_p - a_q - g)

has no tau in it, so the gate gradient is the same draw for draw at every temperature (tested).
With q(c|x) = p(c|x) (the ``gate`` guide) the two densities cancel and ``concrete`` equals
``gumbel``.

References:
    1. C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution: A Continuous Relaxation of
       Discrete Random Variables", ICLR 2017 (Sec. 3.3, App. C: densities in log space).
"""

from __future__ import annotations

import torch
from pyro import distributions as dist

from pyro_moe.estimators.relaxed import RelaxedEstimator, RelaxedGate
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("concrete")
class Concrete(RelaxedEstimator):
    """Relaxed ELBO: Concrete densities in model and guide (Maddison et al. 2017)."""

    name = "concrete"
    bias = "relaxed ELBO (Concrete densities); the gate-parameter bias does not depend on tau"

    def guide_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        return RelaxedGate(logits, self.temperature(), "soft", density=True, normalized=True)

    def model_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        return RelaxedGate(logits, self.temperature(), "soft", density=True, normalized=True)
