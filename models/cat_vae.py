"""Categorical VAE: 20 categorical latents of 10 classes each, Bernoulli decoder (Jang et al. 2017).

Generative story, for each image x_n (784 bits)::

    c_{n,l} ~ Categorical(1/K, ..., 1/K),   l = 1..L     site "cluster" (plate "latents", dim -2)
    x_n | c_n ~ Bernoulli(sigmoid(f([onehot(c_{n,1}), ..., onehot(c_{n,L})])))   site "obs"

with a mirrored MLP decoder f (L*K -> 256 -> 512 -> 784) and an amortized mean-field guide
q(c_{n,l}|x_n) = Categorical(softmax(g(x_n)_l)), g: 784 -> 512 -> 256 -> L*K (guide ``cat-vae``).
The ELBO is E_q[log p(x|c)] - sum_l KL(q(c_l|x) || Uniform(K)). The model reads c through
:func:`pyro_moe.gate.select` (one-hot rows of the identity), so integer samples (score-function
estimators) and relaxed one-hot vectors (Gumbel-softmax, straight-through) run the same body.

K^L = 10^20 joint assignments cannot be enumerated, so validation uses a Monte Carlo estimate of
the discrete ELBO (:meth:`CategoricalVAE.validation_estimator`) instead of TraceEnum.

References:
    1. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017
       (Sec. 4.2, Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO

from pyro_moe.base import PyroModel, check_num_components, data_plate, register_module
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.relaxed import gumbel_like
from pyro_moe.gate import select
from pyro_moe.nn import mlp
from pyro_moe.registry import MODELS


class MonteCarloELBO:
    """The discrete ELBO estimated with ``num_particles`` guide samples (no enumeration)."""

    def __init__(self, num_particles: int = 8, max_plate_nesting: int = 2) -> None:
        self.elbo = Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=True,
            max_plate_nesting=max_plate_nesting,
        )

    def value(self, model, guide, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO as a float (as :meth:`~pyro_moe.estimators.enum.Enumerate.value`)."""
        with torch.no_grad():
            return self.elbo.loss(model, guide, *args, **kwargs)


def _sizes(hidden: Sequence[int] | str) -> list[int]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]  # one hidden layer (``-o hidden=64`` on the command line)
    sizes = [int(h) for h in hidden.split(",")] if isinstance(hidden, str) else list(hidden)
    if not sizes or any(h < 1 for h in sizes):
        raise ConfigError(f"hidden sizes must be integers >= 1, got {hidden!r}")
    return sizes


@MODELS.register("cat-vae")
class CategoricalVAE(PyroModel):
    """Categorical VAE: L categorical latents x K classes, Bernoulli decoder (Jang et al.)."""

    pyro_name = "cat_vae"
    max_plate_nesting = 2
    default_guide = "cat-vae"
    exact_guide = "cat-vae"
    monitor = "valid_loss"
    traceenum_summable = False  # obs depends on all L latents of its latents plate
    tasks = ("clustering", "classification")
    smoke_spec = {
        "data": "digits",
        "data_options": {"n": 120},
        "model_options": {"num_latents": 3, "num_components": 4, "hidden": "16"},
        "estimator": "st-gumbel",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        num_latents: int = 20,
        num_components: int = 10,
        hidden: Sequence[int] | str = (512, 256),
        activation: str = "relu",
        validation_particles: int = 8,
    ) -> None:
        sizes = _sizes(hidden)
        super().__init__()
        self.num_latents = check_num_components(num_latents)
        self.num_components = check_num_components(num_components)
        self.input_dim, self.output_dim = input_dim, 0
        self.validation_particles = validation_particles
        code = self.num_latents * self.num_components
        self.encoder = mlp([input_dim, *sizes, code], activation)
        self.decoder = mlp([code, *sizes[::-1], input_dim], activation)
        self.register_buffer("identity", torch.eye(self.num_components))

    def parameter_group(self, name: str) -> str:
        """Harness groups: ``encoder`` (q(c|x)) and ``decoder`` (p(x|c))."""
        return name.split(".")[0]

    def validation_estimator(self) -> MonteCarloELBO:
        return MonteCarloELBO(self.validation_particles, self.max_plate_nesting)

    def cluster_logits(self, x: torch.Tensor) -> torch.Tensor:
        """q(c|x) logits laid out for the plates: ``[L, N, K]``."""
        logits = self.encoder(x.reshape(x.shape[0], -1))
        return logits.reshape(x.shape[0], self.num_latents, self.num_components).transpose(0, 1)

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``[..., 1, N, D]`` from c (integer ``[..., L, N]`` or one-hot
        ``[..., L, N, K]``); the size-1 dim keeps the latents plate's place, so particle dims to
        the left stay aligned."""
        # a weighting of the identity's rows is the weighting itself: relaxed one-hot c as is
        onehot = c if c.is_floating_point() else select(self.identity, c, event_dim=1)
        code = onehot.movedim(-3, -2).flatten(-2)  # [..., N, L*K]
        return self.decoder(code).unsqueeze(-3)

    def relaxed_neg_elbo(self, x: torch.Tensor, temperature: float, samples: int) -> torch.Tensor:
        """The relaxed objective Jang et al.'s reference code reports, per image ``[N]``:

            -( (1/S) sum_s log p(x | y_s) ) + sum_l sum_k q_lk log(K q_lk),
            y_{s,l} = softmax((log q_l + g_{s,l}) / tau),   g ~ Gumbel(0, 1),

        the decoder fed Gumbel-softmax samples at temperature tau = ``temperature`` and the
        categorical KL to Uniform(K) in closed form. It is the loss a Gumbel-softmax run descends,
        not a bound on the discrete model's log p(x): a decoder trained on relaxed inputs can score
        lower here than on the one-hot codes of the discrete -ELBO. As tau -> 0 the samples turn
        one-hot and the expectation becomes the discrete -ELBO.
        """
        logits = torch.log_softmax(self.cluster_logits(x), -1)  # [L, N, K]
        noisy = logits.expand(samples, *logits.shape)
        y = torch.softmax((noisy + gumbel_like(noisy)) / temperature, -1)  # [S, L, N, K]
        likelihood = dist.Bernoulli(logits=self.decode(y).squeeze(-3), validate_args=False)
        log_lik = likelihood.log_prob(x.reshape(x.shape[0], -1)).sum(-1).mean(0)  # [N]
        kl = (logits.exp() * (logits + math.log(self.num_components))).sum((0, -1))  # [N]
        return kl - log_lik

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        prior = torch.zeros(self.num_components, dtype=x.dtype, device=x.device)
        with data_plate(x, num_data):
            with pyro.plate("latents", self.num_latents, dim=-2):
                c = pyro.sample("cluster", dist.Categorical(logits=prior))
            # validate_args=False: grey-level inputs (the smoke set) score as cross-entropy
            obs = dist.Bernoulli(logits=self.decode(c), validate_args=False).to_event(1)
            return pyro.sample("obs", obs, obs=x.reshape(x.shape[0], -1))

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Negative ELBO per image (Monte Carlo, ``validation_particles`` samples)."""
        from pyro_moe.registry import GUIDES

        guide = GUIDES[self.default_guide](self)
        neg = self.validation_estimator().value(self.model, guide, x)
        return {"neg_elbo": neg / len(x)}
