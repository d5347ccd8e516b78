"""``relax``: REBAR's control variate plus a learned network, all tuned to minimise the variance.

The control variate of ``rebar`` gains a free-form term (Grathwohl et al. 2018, Sec. 3.3, the
discrete case):

    c_phi(z) = eta f(sigma_lambda(z)) + r_rho(z),

r_rho a small MLP applied to each cell's perturbed logits z (K numbers) and summed over the cells
of a data point (scaled like f by the ``data`` plate). With b = argmax z and z~ ~ p(z | b),

    g_theta = [f(b) - c_phi(z~)] grad log q(b) + grad c_phi(z) - grad c_phi(z~)

is unbiased for any phi; phi = (eta, lambda, rho) follows the gradient of E||g_theta||^2, computed
in each training-mode :meth:`loss` and applied in :meth:`advance` by the estimator's own Adam
optimiser (its state in ``state_dict``). r_rho's last layer starts at zero, so an untrained
``relax`` is ``rebar`` at the same eta and lambda. Unbiased for the ELBO gradient.

References:
    1. W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud, "Backpropagation through the Void:
       Optimizing control variates for black-box gradient estimation", ICLR 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.points import PointCosts
from pyro_moe.estimators.rebar import Rebar
from pyro_moe.nn import mlp
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("relax")
class Relax(Rebar):
    """REBAR's control variate plus a learned network r_rho(z) (Grathwohl et al. 2018).

    eta, lambda and rho follow the variance gradient with the estimator's own optimiser."""

    name = "relax"

    def __init__(self, *, hidden_dim: int = 16, **options) -> None:
        super().__init__(**options)
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ConfigError(f"relax hidden_dim must be an integer >= 1, got {hidden_dim!r}")
        self.hidden_dim = hidden_dim
        self.net: nn.Module | None = None

    def check(self, guide: nn.Module) -> None:
        super().check(guide)
        model = getattr(guide, "target", None)
        k = getattr(model, "num_components", None)
        if self.net is None and isinstance(k, int):
            first = next(iter(model.parameters()), None)
            self.build(k, torch.get_default_dtype() if first is None else first.dtype)

    def build(self, categories: int, dtype: torch.dtype) -> None:
        """r_rho: K -> hidden -> 1, the last layer zero (r = 0 at the start)."""
        self.net = mlp([categories, self.hidden_dim, 1], "tanh").to(dtype)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def control_parameters(self) -> list[nn.Parameter]:
        return super().control_parameters() + list(self.net.parameters())

    def learned_terms(self, z: torch.Tensor, z_tilde: torch.Tensor, costs: PointCosts) -> tuple:
        """r_rho at z and at z~ in one pass of the network, each summed over a point's cells."""
        if self.net is None:
            self.build(z.shape[-1], z.dtype)
        r = self.net(torch.stack((z, z_tilde)))[..., 0]  # [2, E, S, *cells, N]
        r = costs.scale * r.reshape(r.shape[:3] + (-1, r.shape[-1])).sum(3)  # [2, E, S, N]
        return r[0], r[1]
