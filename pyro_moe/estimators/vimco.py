"""``vimco``: the S-sample importance-weighted bound with per-sample leave-one-out signals.

For each data point, with f_s = log p(x, y, c_s) - log q(c_s) and c_1..c_S ~ q independently,

    L = log (1/S) sum_s exp(f_s)            (a tighter bound than the ELBO, -> log p as S grows)
    grad L ~ sum_s [L - L_{-s}] grad log q(c_s) + sum_s w_s grad f_s,   w = softmax(f),
    L_{-s} = L with f_s replaced by the mean of the other f_j (a geometric-mean stand-in).

The learning signal L - L_{-s} depends on c_s through L; only the baseline L_{-s} does not, and
that is what keeps the estimate unbiased for grad E[L]: E[L_{-s} grad log q(c_s)] = 0, while
E[L grad log q(c_s)] is part of grad E[L]. The second sum is grad L with the samples held fixed; it
keeps the term -w_s grad log q(c_s) of grad f_s, which unlike the single-sample ELBO's has a
non-zero mean here (w_s depends on c_s). With a subsampled data plate the bound is computed per
point on the unscaled terms and then scaled by num_data / batch size. The variance harness scores
vimco against the exact gradient of E[L] for its S (enumerating the K^S joint samples), with the
gap to the single-sample ELBO's gradient reported separately.

References:
    1. A. Mnih, D. J. Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016.
    2. Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyro_moe.estimators.sampled import Costs, SampledEstimator
from pyro_moe.registry import ESTIMATORS


def log_mean_exp(f: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(f, dim) - math.log(f.shape[dim])


def leave_one_out_bounds(f: torch.Tensor) -> torch.Tensor:
    """``L_{-s}`` for every s (dim 1 of ``f`` ``[E, S, N]``): ``[E, S, N]``."""
    s = f.shape[1]
    others_mean = (f.sum(1, keepdim=True) - f) / (s - 1)  # [E, S, N]
    eye = torch.eye(s, dtype=torch.bool, device=f.device)[None, :, :, None]  # [1, s, j, 1]
    replaced = torch.where(eye, others_mean[:, :, None, :], f[:, None, :, :])  # [E, s, j, N]
    return log_mean_exp(replaced, 2)


@ESTIMATORS.register("vimco")
class Vimco(SampledEstimator):
    """S-sample importance-weighted bound with leave-one-out learning signals (Mnih & Rezende)."""

    name = "vimco"
    unbiased_for = "multi-sample-bound"
    min_particles = 2

    def __init__(self, *, num_particles: int = 4, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def objective(self, costs: Costs, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        f = costs.f / costs.scale  # unscaled per-point terms [E, S, N]
        bound = log_mean_exp(f, 1)  # [E, N]
        signal = (bound[:, None, :] - leave_one_out_bounds(f)).detach()  # [E, S, N]
        surrogate = bound + (signal * costs.logq).sum(1)
        return costs.scale * bound.sum(-1), costs.scale * surrogate.sum(-1)
