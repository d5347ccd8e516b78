"""``rloo``: S samples per data point, each baselined by the mean of the other S - 1.

    grad ELBO ~ (1/S) sum_s [ (f_s - b_s) grad log q(c_s) + grad~ f_s ],
    b_s = (1/(S-1)) sum_{j != s} f_j,

with f_s = log p(x, y, c_s) - log q(c_s) per data point and grad~ f_s its gradient without the
zero-mean term -grad log q(c_s) (Pyro's ``TraceGraph_ELBO`` form, shared with ``reinforce`` and
``nvil``; ``zero_mean_term=True`` keeps it, see
:func:`~pyro_moe.estimators.sampled.score_surrogate`). The baseline does not depend on c_s, so
the estimate stays unbiased; it needs no learned parameters and no state.

References:
    1. W. Kool, H. van Hoof, M. Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
       ICLR 2019 Deep RL Meets Structured Prediction workshop.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_moe.estimators.sampled import Costs, SampledEstimator, score_surrogate
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("rloo")
class LeaveOneOut(SampledEstimator):
    """Score function with a leave-one-out baseline over S samples (Kool et al. 2019)."""

    name = "rloo"
    min_particles = 2

    def __init__(
        self, *, num_particles: int = 4, max_plate_nesting: int = 1, zero_mean_term: bool = False
    ) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.zero_mean_term = bool(zero_mean_term)

    def objective(self, costs: Costs, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        f = costs.f.detach()
        s = f.shape[1]
        baseline = (f.sum(1, keepdim=True) - f) / (s - 1)
        return score_surrogate(costs, baseline, self.zero_mean_term)
