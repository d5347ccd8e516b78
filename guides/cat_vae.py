"""Guide of the categorical VAE (:mod:`pyro_moe.models.cat_vae`): mean-field
q(c|x) = prod_l Categorical(c_l | softmax(g(x)_l)) with the model's encoder g."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from pyro_moe.models.cat_vae import CategoricalVAE

from pyro_moe.base import PyroGuide, data_plate
from pyro_moe.registry import GUIDES


@GUIDES.register("cat-vae")
class CategoricalVAEGuide(PyroGuide):
    """Mean-field categorical encoder q(c_l|x), l = 1..L."""

    model_types = (CategoricalVAE,)

    def forward(self, x, y=None, num_data=None):
        logits = self.target.cluster_logits(x)  # [L, N, K]
        with data_plate(x, num_data), pyro.plate("latents", self.target.num_latents, dim=-2):
            return pyro.sample("cluster", dist.Categorical(logits=logits))
