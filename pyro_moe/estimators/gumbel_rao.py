"""``gumbel-rao``: straight-through Gumbel with a Rao-Blackwellised backward pass.

The forward pass is the exact one-hot D = onehot(argmax(logits + g)), as in ``st-gumbel``. The
backward pass replaces the single relaxed sample's Jacobian by its conditional expectation given D,

    grad ~ (1/M) sum_m [d/dlogits softmax((logits + g) / tau)] at g = g_m,
    g_m ~ Gumbel(0, 1)^K conditioned on argmax(logits + g) = D,

with the conditional Gumbels drawn by exponential races in log space and held fixed (detached) in
the derivative: only the softmax's explicit dependence on the logits is differentiated, not the
conditional sampler's. Since E[g | D] sampling and differentiating commute this way, the mean is
exactly the straight-through estimator's (same bias, see ``st-gumbel``) and the variance is lower,
the Rao-Blackwellisation of Paulus et al. (2020), Thm. 1. (Differentiating through the conditional
sampler as well would change the mean.)

References:
    1. M. B. Paulus, C. J. Maddison, A. Krause, "Rao-Blackwellizing the Straight-Through
       Gumbel-Softmax Gradient Estimator", ICLR 2021 (arXiv:2010.04838, 2020).
"""

from __future__ import annotations

import torch
from pyro import distributions as dist

from pyro_moe.estimators.relaxed import RelaxedEstimator, RelaxedGate, check_samples
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("gumbel-rao")
class GumbelRao(RelaxedEstimator):
    """Straight-through Gumbel, backward averaged over M conditional Gumbels (Paulus et al.)."""

    name = "gumbel-rao"
    mode = "rao"
    bias = "straight-through's bias (the same mean gradient), with lower variance"

    def __init__(self, *, num_samples: int = 10, **options) -> None:
        super().__init__(**options)
        self.num_samples = check_samples(num_samples)

    def guide_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        state["posterior_logits"] = logits
        return RelaxedGate(
            logits, self.temperature(), "rao", False, self.num_samples, normalized=True
        )
