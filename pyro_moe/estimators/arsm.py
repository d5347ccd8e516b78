"""``arsm``: Augment-REINFORCE-Swap-Merge, the categorical generalisation of ARM.

For z ~ Categorical(softmax(phi)) over K values, write z = argmin_i pi_i exp(-phi_i) with
pi ~ Dirichlet(1_K) (an exponential race). Swapping two entries of pi gives the pseudo-actions
z^{c<->j} = argmin_i (pi^{c<->j})_i exp(-phi_i), each again distributed as q (z^{c<->c} = z). The
gradient of E_q[f(z)] with respect to the logits is (Yin et al. 2019, Eq. 9)

    g_c = sum_j ( f(z^{c<->j}) - (1/K) sum_m f(z^{m<->j}) ) (1/K - pi_j),

using the K(K-1)/2 + 1 distinct pseudo-actions. For a point's C independent variables (each with
its own pi_l and logits phi_l), the swap (c, j) is applied to all of them at once and
g_{l,c} = sum_j (f(z^{c<->j}) - mean_m f(z^{m<->j})) (1/K - pi_{l,j}) (Yin et al., Sec. 2.3),
so the cost stays K(K-1)/2 + 1 evaluations per draw. With f = log p - log q and S draws:

    value     = (1/S) sum_s mean_{c,j} f(z_s^{c<->j})            (every pseudo-action ~ q)
    surrogate = (1/S) sum_s [ sum_{l,c} stop(g_{s,l,c}) phi_{l,c} + mean_{c,j} f(z_s^{c<->j}) ]

the second term being an unbiased estimate of E_q[grad f] averaged over the pseudo-actions. This
is the original ARSM estimator (not the coupled variants of Dong, Mnih, Tucker 2021). Unbiased
for the ELBO gradient.

References:
    1. M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
       Backpropagation Through Categorical Variables", ICML 2019.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_moe.estimators.points import PointCosts, PointEstimator, cells_first, points_back
from pyro_moe.registry import ESTIMATORS


def swap_pairs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The M = K(K-1)/2 + 1 swaps (identity first) as permutations ``[M, K]``, and the index of
    the swap {c, j} for every ordered pair ``[K, K]`` (the identity on the diagonal)."""
    perms, index = [list(range(k))], torch.zeros(k, k, dtype=torch.long)
    for c in range(k):
        for j in range(c + 1, k):
            perm = list(range(k))
            perm[c], perm[j] = j, c
            index[c, j] = index[j, c] = len(perms)
            perms.append(perm)
    return torch.tensor(perms), index


@ESTIMATORS.register("arsm")
class Arsm(PointEstimator):
    """Augment-REINFORCE-Swap-Merge: swapped pseudo-actions of one Dirichlet draw (Yin et al.)."""

    name = "arsm"

    def num_points(self, cells: int, categories: int) -> int:
        return self.num_particles * (categories * (categories - 1) // 2 + 1)

    def choose(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        phi = cells_first(logits)  # [E, N, C, K], carries the gradient
        e, n, cells, k = phi.shape
        u = torch.rand((e, self.num_particles, n, cells, k), dtype=phi.dtype, device=phi.device)
        log_race = torch.log(-torch.log(u.clamp(torch.finfo(phi.dtype).tiny, 1 - 1e-7)))
        perms, _ = swap_pairs(k)
        swapped = log_race[..., perms.to(phi.device)]  # [E, S, N, C, M, K]
        z = (phi.detach()[:, None, :, :, None, :] - swapped).argmax(-1)  # [E, S, N, C, M]
        state["logits"] = phi
        state["pi"] = torch.softmax(log_race, -1)  # pi = E / sum E, E = -log u ~ Exp(1)
        return points_back(z.permute(0, 2, 1, 4, 3).reshape(e, n, -1, cells), logits)

    def objective(self, costs: PointCosts, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        phi, pi = costs.state["logits"], costs.state["pi"]  # [E, N, C, K], [E, S, N, C, K]
        k = phi.shape[-1]
        e, n = costs.f.shape[0], costs.f.shape[-1]
        _, index = swap_pairs(k)
        f = costs.f.reshape(e, self.num_particles, -1, n)[:, :, index.to(phi.device)]  # c, j
        fd = f.detach()  # [E, S, K(c), K(j), N]
        signal = fd - fd.mean(2, keepdim=True)
        g = torch.einsum("escjn,esnlj->esnlc", signal, 1.0 / k - pi)  # [E, S, N, C, K]
        value = f.mean((2, 3))  # [E, S, N]
        score = (g.mean(1).detach() * phi).sum((1, 2, 3))  # [E]
        return value.detach().sum(-1).mean(-1), value.sum(-1).mean(-1) + score
