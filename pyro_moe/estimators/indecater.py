"""``indecater``: every variable's score term summed exactly over its K values, the others drawn.

For a point's C independent categorical variables c = (c_1, ..., c_C), q(c) = prod_l q_l(c_l)
(the L latents of a categorical VAE; C = 1 for a mixture's gate), and f = log p - log q, the
CatLog-derivative trick gives

    grad E_q[f(c)] = E_q[grad f(c)] + sum_l E_{c_-l}[ sum_k grad q_l(k) f(k, c_-l) ],

with f(k, c_-l) the cost with variable l set to k and the others at the draw. The estimator draws
S samples c^s ~ q and evaluates f at the S * C * K points (k, c^s_-l):

    value     = (1/S) sum_s (1/C) sum_l sum_k q_l(k) f_slk,       f_slk = f(k, c^s_-l)
    surrogate = (1/S) sum_s sum_l sum_k [ q_l(k) stop(f_slk) + stop(q_l(k)) f_slk / C ]

The sum over k makes each variable's score term its own baseline (sum_k grad q_l(k) = 0), and the
second term is a Rao-Blackwellised estimate of E_q[grad f]. Unbiased for the ELBO gradient; with
C = 1 it is exact. Cost: S * C * K evaluations of the model per data point.

References:
    1. L. De Smet, E. Sansone, P. Zuidberg Dos Martires, "Differentiable Sampling of Categorical
       Distributions Using the CatLog-Derivative Trick", NeurIPS 2023.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_moe.estimators.points import (
    PointCosts,
    PointEstimator,
    cell_log_probs,
    cells_first,
    draws,
    points_back,
)
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("indecater")
class IndeCateR(PointEstimator):
    """Per-variable exact sums over K values, other variables drawn (De Smet et al. 2023)."""

    name = "indecater"

    def num_points(self, cells: int, categories: int) -> int:
        return self.num_particles * cells * categories

    def choose(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        lp = cells_first(logits.detach())  # [E, N, C, K]
        c = draws(lp, self.num_particles)  # [E, S, N, C]
        cells, k = lp.shape[-2], lp.shape[-1]
        own = torch.eye(cells, dtype=torch.bool, device=lp.device)[:, None, None, :]  # [l,1,1,C]
        values = torch.arange(k, device=lp.device)[None, :, None, None]  # [1, K, 1, 1]
        points = torch.where(own, values, c[:, :, None, None])  # [E, S, l, K, N, C]
        e, n = lp.shape[0], lp.shape[1]
        return points_back(points.permute(0, 4, 1, 2, 3, 5).reshape(e, n, -1, cells), logits)

    def objective(self, costs: PointCosts, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        cells, k = costs.state["cells"], costs.state["categories"]
        e, n = costs.f.shape[0], costs.f.shape[-1]
        shape = (e, self.num_particles, cells, k)
        f = costs.f.reshape(shape + (n,))  # [E, S, l, K, N]
        per_cell = cell_log_probs(costs).reshape(shape + (cells, n))  # [E, S, l, K, C, N]
        q = torch.diagonal(per_cell, dim1=2, dim2=4).permute(0, 1, 4, 2, 3).exp()  # q_l(k)
        value = (q.detach() * f).sum(3).mean(2)  # [E, S, N]
        surrogate = (q * f.detach()).sum(3).sum(2) + value
        return value.sum(-1).mean(-1), surrogate.sum(-1).mean(-1)
