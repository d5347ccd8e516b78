"""Guides for the GMM, the VAE and the deep clustering models (VaDE, DMVAE).

* ``gmm-posterior``: q(c|x) = p(c|x), the GMM's exact posterior (the ELBO equals log p(x)).
* ``vae``: q(z|x) = N(mu(x), diag(sigma(x)^2)), the model's encoder; no ``cluster`` site (with
  ``enum`` a mixture prior is summed out in the model).
* ``vade``: q(z|x) and q(c|x) = p(c | z^) at the sampled z^ (Jiang et al. 2017).
* ``dmvae``: q(z|x) and q(c|x) = Categorical(softmax(g(x))), the separate cluster network
  (Singh, Panda & Gajbhiye, "Mixture of Experts using Discrete VAE", sec. 6).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro_moe.models.dmvae import DMVAE
from pyro_moe.models.gmm import GaussianMixture
from pyro_moe.models.vade import VaDE
from pyro_moe.models.vae import VAE
from torch import nn

from pyro_moe.base import PyroGuide, data_plate
from pyro_moe.registry import GUIDES


@GUIDES.register("gmm-posterior")
class GMMPosteriorGuide(PyroGuide):
    """q(c|x) = p(c|x), the GMM's exact posterior responsibilities."""

    model_types = (GaussianMixture,)

    def forward(self, x, y=None, num_data=None):
        logits = self.target.cluster_logits(x)
        with data_plate(x, num_data):
            return pyro.sample("cluster", dist.Categorical(logits=logits))


def sample_latent(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """z ~ q(z|x) = N(loc(x), diag(scale(x)^2)) from ``model.encode``, at site ``latent``."""
    loc, scale = model.encode(x)
    return pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


@GUIDES.register("vae")
class VAEGuide(PyroGuide):
    """q(z|x) from the model's encoder; leaves `cluster` to the model (enum sums it out)."""

    samples_cluster = False
    model_types = (VAE,)

    def forward(self, x, y=None, num_data=None):
        with data_plate(x, num_data):
            return sample_latent(self.target, x)


@GUIDES.register("vade")
class VaDEGuide(PyroGuide):
    """q(z|x) from the encoder, then q(c|x) = p(c | z^) at the sampled z^ (VaDE)."""

    model_types = (VaDE,)

    def forward(self, x, y=None, num_data=None):
        with data_plate(x, num_data):
            z = sample_latent(self.target, x)
            logits = self.target.cluster_given_latent(z)
            return pyro.sample("cluster", dist.Categorical(logits=logits))


@GUIDES.register("dmvae")
class DMVAEGuide(PyroGuide):
    """Mean field q(z|x) q(c|x): the encoder and the separate cluster network g (DMVAE)."""

    model_types = (DMVAE,)

    def forward(self, x, y=None, num_data=None):
        with data_plate(x, num_data):
            sample_latent(self.target, x)
            logits = self.target.cluster_log_probs(x)
            return pyro.sample("cluster", dist.Categorical(logits=logits))
