"""Guides of the deep latent Gaussian mixtures (:mod:`pyro_moe.models.dlgmm`).

* ``dlgmm`` (DLGMM, DLDPMM, Gauss-VAE): v ~ Kumaraswamy(a(x), b(x)) at ``weights``,
  c ~ Categorical(SB(v)) at ``cluster``, z ~ N(mu_c(x), diag(sigma_c(x)^2)) at ``latent``: the
  Gaussian mixture posterior sum_k SB(v)_k N(z; mu_k(x), sigma_k(x)^2) of Nalisnick, Hertel &
  Smyth (2016); with K = 1 only ``latent``.
* ``sb-vae``: v ~ Kumaraswamy(a(x), b(x)) at ``latent`` (Nalisnick & Smyth, "Stick-Breaking
  Variational Autoencoders", ICLR 2017).

The networks belong to the model (its encoder), so they are registered and saved once.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from pyro_moe.models.dlgmm import LatentGaussianMixture, StickBreakingVAE, stick_breaking

from pyro_moe.base import PyroGuide, data_plate
from pyro_moe.distributions import Kumaraswamy
from pyro_moe.gate import select
from pyro_moe.registry import GUIDES


@GUIDES.register("dlgmm")
class DLGMMGuide(PyroGuide):
    """q(v|x) Kumaraswamy sticks, q(c|v) = SB(v), q(z|c, x) the c-th Gaussian of the encoder."""

    model_types = (LatentGaussianMixture,)

    def forward(self, x, y=None, num_data=None):
        model = self.target
        with data_plate(x, num_data):
            loc, scale, a, b = model.encode(x)  # [N, K, L], [N, K-1]
            if model.num_components == 1:
                return pyro.sample("latent", dist.Normal(loc[:, 0], scale[:, 0]).to_event(1))
            v = pyro.sample("weights", Kumaraswamy(a, b).to_event(1))
            c = pyro.sample("cluster", dist.Categorical(probs=stick_breaking(v)))
            component = dist.Normal(select(loc, c, event_dim=1), select(scale, c, event_dim=1))
            return pyro.sample("latent", component.to_event(1))


@GUIDES.register("sb-vae")
class StickBreakingVAEGuide(PyroGuide):
    """q(v|x) = Kumaraswamy(a(x), b(x)) at ``latent``."""

    model_types = (StickBreakingVAE,)

    def forward(self, x, y=None, num_data=None):
        with data_plate(x, num_data):
            return pyro.sample("latent", Kumaraswamy(*self.target.encode(x)).to_event(1))
