"""Guides for the mixture of experts (:mod:`pyro_moe.models.moe`).

* ``none``: no guide site for ``cluster``. With ``enum`` the model's gate is summed out, so the
  ELBO is exactly log p(y|x). Sampling estimators cannot use it.
* ``gate``: q(c|x) = p(c|x), the model's own gate. The ELBO collapses to the Jensen bound
  E_{p(c|x)}[log p(y|x, c)] = sum_k p(k|x) log p(y|x, k) that the question on the Jensen bound for
  mixtures of experts optimises; the log p(c|x)
  and log q(c|x) terms cancel.
* ``posterior``: an amortized posterior network q(c|x, y) = Categorical(softmax(h([x, y]))). The
  ELBO is log p(y|x) - KL(q(c|x,y) || p(c|x,y)), tight when q matches the exact posterior
  p(c|x,y) proportional to p(c|x) p(y|x,c).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_moe.models.moe import MixtureOfExperts

from pyro_moe.base import PyroGuide, data_plate, register_module
from pyro_moe.errors import ConfigError
from pyro_moe.nn import mlp
from pyro_moe.registry import GUIDES


@GUIDES.register("none")
class NoGuide(PyroGuide):
    """No guide site for `cluster`: `enum` sums the gate out in the model (exact log p(y|x))."""

    samples_cluster = False
    is_empty = True

    def forward(self, x, y=None, num_data=None):
        return None


@GUIDES.register("gate")
class GateGuide(PyroGuide):
    """q(c|x) = p(c|x), the model's gate: the ELBO becomes the Jensen bound of the question."""

    model_types = (MixtureOfExperts,)

    def forward(self, x, y=None, num_data=None):
        logits = self.target.gate_logits(x)  # [N, K]
        with data_plate(x, num_data):
            return pyro.sample("cluster", dist.Categorical(logits=logits))


@GUIDES.register("posterior")
class PosteriorGuide(PyroGuide):
    """Amortized posterior q(c|x, y): an MLP on [x, y] (y one-hot for classes) -> K logits."""

    pyro_name = "moe_posterior"
    model_types = (MixtureOfExperts,)

    def __init__(self, model: MixtureOfExperts, hidden_dim: int | None = None) -> None:
        super().__init__(model)
        hidden = hidden_dim or model.hparams["hidden_dim"]
        self.classes = model.output_dim if model.task == "classification" else None
        self.net = mlp([model.input_dim + model.output_dim, hidden, model.num_components], "tanh")

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log q(c|x, y) up to a constant: ``[N, K]``."""
        if y is None:
            raise ConfigError("the posterior guide q(c|x, y) needs the targets y")
        features = F.one_hot(y, self.classes).to(x.dtype) if self.classes else y
        return self.net(torch.cat([x, features], -1))

    def forward(self, x, y=None, num_data=None):
        register_module(self.pyro_name, self)
        logits = self.logits(x, y)
        with data_plate(x, num_data):
            return pyro.sample("cluster", dist.Categorical(logits=logits))
