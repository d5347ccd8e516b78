"""``sum-and-sample``: the k most probable values summed exactly, one drawn from the rest.

For a point's discrete value a (the joint of its C cells, q(a) = prod_l q_l(a_l)) let T be the k
most probable values (found by beam search over the cells, exact for a product distribution),
Q_T = sum_T q and a' a draw from q restricted to the rest (the highest of the Gumbel-perturbed
top k + 1, stochastic beam search, outside T). Then

    E_q[f] = sum_{a in T} q(a) f(a) + (1 - Q_T) E_{q(.|not T)}[f],
    value     = sum_{a in T} q(a) f(a) + (1 - Q_T) f(a'),
    surrogate = sum_{a in T} [ q(a) stop(f(a) - b) + stop(q(a)) f(a) ]
                + stop(1 - Q_T) [ stop(f(a') - b) log q(a') + f(a') ],

with the baseline b = sum_T q f / Q_T (the summed values' mean; it does not depend on a'). The
remainder's normaliser drops out of the gradient: grad (1 - Q_T) f(a') + (1 - Q_T) f(a')
grad log q(a' | not T) = (1 - Q_T) f(a') grad log q(a'). The choice of T depends on the logits
only, not on a draw, so the estimate stays unbiased for the ELBO gradient; the more mass T holds,
the less variance is left. ``num_particles`` = k + 1 evaluations of the model per data point.

References:
    1. R. Liu, J. Regier, N. Tripuraneni, M. I. Jordan, J. McAuliffe, "Rao-Blackwellized
       Stochastic Gradients for Discrete Distributions", ICML 2019.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_moe.distributions import log1mexp
from pyro_moe.estimators.points import (
    PointCosts,
    PointEstimator,
    cells_first,
    joint_size,
    points_back,
    top_k_assignments,
)
from pyro_moe.registry import ESTIMATORS


def first_outside(candidates: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """The first of ``candidates`` ``[..., m, C]`` not among ``taken`` ``[..., k, C]``:
    ``[..., 1, C]`` (one exists when m > k)."""
    member = (candidates[..., :, None, :] == taken[..., None, :, :]).all(-1).any(-1)  # [..., m]
    pos = (~member).to(candidates.dtype).argmax(-1)  # the first True
    index = pos[..., None, None].expand(*pos.shape, 1, candidates.shape[-1])
    return candidates.gather(-2, index)


@ESTIMATORS.register("sum-and-sample")
class SumAndSample(PointEstimator):
    """The k most probable values summed, one drawn from the rest (Liu et al. 2019)."""

    name = "sum-and-sample"
    min_particles = 2

    def __init__(self, *, num_particles: int = 2, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def num_points(self, cells: int, categories: int) -> int:
        return min(self.num_particles, joint_size(cells, categories, self.num_particles))

    def choose(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        log_p = cells_first(logits.detach()).log_softmax(-1)  # [E, N, C, K]
        k = logits.shape[1] - 1
        top = top_k_assignments(log_p, k, perturb=False)  # [E, N, k, C]
        drawn = top_k_assignments(log_p, k + 1, perturb=True)
        return points_back(torch.cat([top, first_outside(drawn, top)], -2), logits)

    def objective(self, costs: PointCosts, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        f, logq = costs.f, costs.logq  # [E, k + 1, N]; the last point is the draw
        fd, q = f.detach(), logq[:, :-1].exp()
        qd = q.detach()
        baseline = (qd * fd[:, :-1]).sum(1, keepdim=True) / qd.sum(1, keepdim=True)
        rest = log1mexp(logq[:, :-1].detach().logsumexp(1)).exp()  # [E, N]
        summed = (qd * f[:, :-1]).sum(1)
        value = summed + rest * f[:, -1]
        score = (q * (fd[:, :-1] - baseline)).sum(1) + rest * (fd[:, -1] - baseline[:, 0]) * logq[
            :, -1
        ]
        return value.detach().sum(-1), (value + score).sum(-1)
