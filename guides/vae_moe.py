"""Guides for the VAE-gated mixtures of experts (:mod:`pyro_moe.models.vae_moe`).

Both sample z ~ q(z|x) = N(loc(x), diag(scale(x)^2)) first (the model's encoder), then c:

* ``vade-moe``: q(c|x) = p(c|z) at the sampled z, log pi_k + log N(z; mu_k, sigma_k^2) normalised
  (VaDE, Jiang et al. 2017; Singh et al., sec. 3 and 5);
* ``dvmoe``: q(c|x) = the DMVAE's own encoder, the model's gate g(x) (Singh, Panda &
  Gajbhiye, "Mixture of Experts using Discrete VAE", sec. 6-7).

The networks belong to the model (the gate also weighs the experts in p(y|x)), so they are
registered, saved and optimised once.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from pyro_moe.guides.deep_clustering import VaDEGuide, sample_latent
from pyro_moe.models.vae_moe import DVMoE, VadeGatedMoE

from pyro_moe.base import PyroGuide, data_plate
from pyro_moe.registry import GUIDES


@GUIDES.register("vade-moe")
class VadeGuide(VaDEGuide):
    """z ~ q(z|x), then q(c|x) = p(c|z) at that z: the ``vade`` guide, for the VaDE-gated ME."""

    model_types = (VadeGatedMoE,)

    def forward(self, x, y=None, num_data=None):
        with self.target.input_scale():
            return super().forward(x, y, num_data)


@GUIDES.register("dvmoe")
class DVMoEGuide(PyroGuide):
    """z ~ q(z|x), c ~ q(c|x) from the DMVAE's own cluster encoder (the model's gate)."""

    model_types = (DVMoE,)

    def forward(self, x, y=None, num_data=None):
        with data_plate(x, num_data), self.target.input_scale():
            sample_latent(self.target, x)
            logits = self.target.gate_logits(x)
            return pyro.sample("cluster", dist.Categorical(logits=logits))
