"""``unordered``: k draws without replacement, the unordered set estimator with its own baseline.

For a point's discrete value a (the joint of its C cells, q(a) = prod_l q_l(a_l)) draw a set S of
k distinct values without replacement (Gumbel-top-k, by stochastic beam search over the cells).
With p(S) the probability of drawing the unordered set S and p^{D\\s}(S\\{s}) that of drawing
the rest of S from the domain without s,

    R(S, s) = p^{D\\s}(S \\ {s}) / p(S),      value = sum_{s in S} q(s) R(S, s) f(s)

is an unbiased estimate of E_q[f] (Kool et al. 2020, Thm. 1), and the gradient estimate with the
built-in baseline (Thm. 4) is

    sum_s [ grad q(s) R(S, s) (f(s) - B(S, s)) + q(s) R(S, s) grad f(s) ],
    B(S, s) = q(s) f(s) + sum_{s' in S, s' != s} q(s') R^{D\\s}(S, s') f(s'),
    R^{D\\s}(S, s') = p^{D\\{s,s'}}(S \\ {s, s'}) / p^{D\\s}(S \\ {s}),

B(S, s) being the unordered set estimate of E_q[f] given s in S, from the other k - 1 draws.
All p(.) here are set probabilities under sequential draws from the same remainder mass
q(D \\ S) = 1 - sum_S q, computed exactly in log space by a recursion over the 2^k subsets of S
(the probability of a subset T drawn from D \\ (S \\ T) is sum_{i in T} q(i) / (q(D\\S) + q(T))
times that of T \\ {i}). Unbiased for the ELBO gradient; with k >= the number of values it is
the exact sum. Needs 2 <= k <= 8.

References:
    1. W. Kool, H. van Hoof, M. Welling, "Estimating Gradients for Discrete Random Variables by
       Sampling without Replacement", ICLR 2020.
    2. W. Kool, H. van Hoof, M. Welling, "Stochastic Beams and Where to Find Them: The
       Gumbel-Top-k Trick for Sampling Sequences Without Replacement", ICML 2019.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_moe.distributions import log1mexp
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.points import (
    PointCosts,
    PointEstimator,
    cells_first,
    joint_size,
    points_back,
    top_k_assignments,
)
from pyro_moe.registry import ESTIMATORS

#: the largest set the subset recursion handles (2^k subsets)
MAX_SET = 8


def subset_log_probs(logq: torch.Tensor, log_rest: torch.Tensor) -> list[torch.Tensor]:
    """log probability of drawing each subset T of the k elements (bit mask index) first, from
    the domain D \\ (S \\ T): ``logq`` ``[E, k, N]`` (log q of the elements), ``log_rest``
    ``[E, N]`` (log q(D \\ S)); returns 2^k tensors ``[E, N]``."""
    k = logq.shape[1]
    out = [torch.zeros_like(log_rest)]
    for mask in range(1, 2**k):
        members = [i for i in range(k) if mask >> i & 1]
        own = logq[:, members]  # [E, m, N]
        pool = torch.logaddexp(log_rest, own.logsumexp(1))
        rest = torch.stack([out[mask ^ (1 << i)] for i in members], 1)
        out.append((own + rest).logsumexp(1) - pool)
    return out


def set_ratios(logq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log R(S, s) ``[E, k, N]`` and log R^{D\\s}(S, s') ``[E, k, k, N]`` (0 on the diagonal)."""
    k = logq.shape[1]
    log_g = subset_log_probs(logq, log1mexp(logq.logsumexp(1)))
    full = 2**k - 1
    without = [log_g[full ^ (1 << s)] for s in range(k)]
    log_r = torch.stack(without, 1) - log_g[full][:, None]
    rows = []
    for s in range(k):
        row = [
            torch.zeros_like(without[s])
            if t == s
            else log_g[full ^ (1 << s) ^ (1 << t)] - without[s]
            for t in range(k)
        ]
        rows.append(torch.stack(row, 1))
    return log_r, torch.stack(rows, 1)


@ESTIMATORS.register("unordered")
class UnorderedSet(PointEstimator):
    """k draws without replacement, unordered set estimator with built-in baseline (Kool 2020)."""

    name = "unordered"
    min_particles = 2

    def __init__(self, *, num_particles: int = 2, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        if num_particles > MAX_SET:
            raise ConfigError(f"unordered needs num_particles <= {MAX_SET}, got {num_particles}")

    def num_points(self, cells: int, categories: int) -> int:
        return min(self.num_particles, joint_size(cells, categories, self.num_particles))

    def choose(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        log_p = cells_first(logits.detach()).log_softmax(-1)  # [E, N, C, K]
        return points_back(top_k_assignments(log_p, logits.shape[1], perturb=True), logits)

    def objective(self, costs: PointCosts, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        f, logq = costs.f, costs.logq  # [E, k, N]
        log_r, log_r2 = set_ratios(logq.detach())
        weight = (logq.detach() + log_r).exp()  # q(s) R(S, s)
        fd = f.detach()
        baseline = ((logq.detach()[:, None] + log_r2).exp() * fd[:, None]).sum(2)  # [E, k, N]
        value = (weight * f).sum(1)
        surrogate = ((logq + log_r).exp() * (fd - baseline)).sum(1) + value
        return value.detach().sum(-1), surrogate.sum(-1)
