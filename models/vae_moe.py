"""Mixtures of experts gated by a VAE with a mixture prior: VaDE-gated ME and DVMoE
(Singh, Panda & Gajbhiye, "Mixture of Experts using Discrete VAE").

Both models put a deep clustering model on the inputs and let its cluster variable c choose the
expert. Generative story, for each data point n::

    c_n ~ Categorical(pi)                                  site "cluster"
    z_n | c_n = k ~ N(mu_k, diag(sigma_k^2))               site "latent"   (mixture prior in z)
    x_n | z_n ~ N(f(z_n), diag(s(z_n)^2))                  site "obs"      (decoder)
    y_n | x_n, c ~ expert likelihood                       site "label"

with Gaussian (regression) or softmax (classification) experts p(y|x, c = k), K of them run as
one batched network. Everything that depends on c is read through :func:`pyro_moe.gate.select`,
so the same body runs with c an integer (sampled), enumerated (``enum``) or a relaxed one-hot
vector (``gumbel``, ``concrete``, ``st-gumbel``, ...). Under a relaxed gate w the prior is
N(sum_k w_k mu_k, diag(sum_k w_k sigma_k)^2), which tends to p(z|c) as w tends to a one-hot
vector (Singh et al.'s note under Table 1).

* ``vade-moe`` (Singh et al., sec. 5): pi is learned; the label reads the cluster site,
  p(y|x, c), so the joint is p(x, y) = sum_c p(c) p(z|c) p(x|z) p(y|x, c). The guide ``vade-moe``
  samples z ~ q(z|x) and sets q(c|x) = p(c|z) at that z (VaDE, Jiang et al. 2017), and the ELBO is
  E_q[log p(y|x, c)] + ELBO_VaDE(x). At test time p(c|x) = E_{q(z|x)}[p(c|z)] is estimated with
  ``gate_samples`` draws of z (sec. 5.1), so p(y|x) = sum_c p(c|x) p(y|x, c).
* ``dvmoe`` (Singh et al., sec. 6-7): the DMVAE gate: pi uniform, a separate encoder q(c|x) = the
  gate g(x), and K learned prior means and variances. With ``label_gate="encoder"`` (default) the
  label site is the expert mixture under that gate, p(y|x) = sum_c q(c|x) p(y|x, c), so the ELBO
  with the guide ``dvmoe`` (z ~ q(z|x), c ~ q(c|x)) is Singh et al.'s bound

      L(x, y) = log p(y|x) + E_q(z|x)[log p(x|z)] - E_q(c|x)[KL(q(z|x) || p(z|c))]
                - KL(q(c|x) || p(c)),

  exact in c under ``enum``; under ``gumbel`` (relaxed c in p(z|zeta), analytic KL for c) it is
  Singh et al.'s relaxed objective L~, and every other estimator of the registry estimates the
  same L.
  ``label_gate="cluster"`` makes the label read the cluster site instead (the joint form of
  ``vade-moe``, where log p(y|x) is replaced by its Jensen bound E_q(c|x)[log p(y|x, c)]).
  At test time p(y|x) = sum_c q(c|x) p(y|x, c): one pass of the gate network, no sampling.

Weight of the input model (``x_weight`` = beta): the sites ``cluster``, ``latent`` and ``obs`` are
scaled by beta in the model and the guide, so the objective is log p(y|x) + beta ELBO(x) (for
``vade-moe``, E_q[log p(y|x, c)] + beta ELBO_VaDE(x)); beta = 1 is Singh et al.'s L (and L~).
``vade-moe`` defaults to 1; ``dvmoe`` to :data:`DVMOE_X_WEIGHT` = 0.3. Why: at beta = 1 the input
ELBO (about -4.5 nats per point on the 2-D ``shells`` set, against about +0.9 for log p(y|x))
decides q(c|x). A Gaussian mixture in z cannot separate nested shells, so it pulls q(c|x) towards
a partition of the inputs that disagrees with the regression regimes and keeps it soft (mean
entropy 0.5 nats), and the test MSE stays 10-30 times Deep MoE's. At beta -> 0, DVMoE is Deep
MoE with an unused VAE. Measured on D = 2 (1,200 Adam steps, seeds 0-4, test MSE, noise floor
0.01): beta = 1: 0.26, 0.21, 5.0, 0.33, 2.9; beta = 0.3: 0.0095, 0.021, 2.2, 0.019, 0.88;
beta = 1e-4 (seeds 2, 4): 4.2, 1.9; Deep MoE: 0.0092, 0.022, 2.8, 0.0095, 1.1
(benchmarks/results/table1_dvmoe_5seeds.md has the full table).

Shapes under ``TraceEnum_ELBO`` (max_plate_nesting=1) for ``dvmoe``, N=5, D=2, d_z=2, K=3, as
printed by ``poutine.trace(poutine.enum(config_enumerate(model.model), -2)).get_trace(x, y)
.format_shapes()`` with the guide's z replayed::

     Trace Shapes:
      Sample Sites:
         data dist     |
             value   5 |
      cluster dist   5 |
             value 3 1 |
       latent dist 3 5 | 2
             value   5 | 2
          obs dist   5 | 2
             value   5 | 2
        label dist   5 | 1
             value   5 | 1

References:
    1. G. Singh, A. Panda, A. Gajbhiye, "Mixture of Experts using Discrete VAE" (undated report).
    2. Z. Jiang, Y. Zheng, H. Tan, B. Tang, H. Zhou, "Variational Deep Embedding: An Unsupervised
       and Generative Approach to Clustering", IJCAI 2017.
    3. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro_moe.models.gmm import softplus_inverse
from pyro_moe.models.moe import (
    NETWORKS,
    evaluate_experts,
    init_experts_from_targets,
    make_experts,
    mix_expert_outputs,
)
from pyro_moe.models.vade import MixturePrior
from torch import nn

from pyro_moe.base import PyroModel, check_num_components, data_plate, register_module
from pyro_moe.errors import ConfigError
from pyro_moe.gate import select
from pyro_moe.nn import mlp
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_choice, check_int, check_number

LABEL_GATES = ("encoder", "cluster")
#: DVMoE's default weight beta of the input ELBO (measured in benchmarks/table1_dvmoe.py)
DVMOE_X_WEIGHT = 0.3


class VaeGatedMoE(MixturePrior, PyroModel):
    """Shared body of ``vade-moe`` and ``dvmoe`` (see the module docstring)."""

    max_plate_nesting = 1
    monitor = "valid_nll"
    tasks = ("regression", "classification")
    smoke_spec = {
        "data": "shells",
        "data_options": {"n": 60, "dim": 2, "clusters": 2},
        "model_options": {"num_components": 2, "hidden_dim": 8},
        "estimator": "enum",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        task: str = "regression",
        *,
        num_components: int = 3,
        latent_dim: int = 2,
        hidden_dim: int = 32,
        expert: str = "linear",
        activation: str = "tanh",
        label_gate: str = "cluster",
        gate_samples: int = 32,
        min_scale: float = 1e-3,
        x_weight: float = 1.0,
    ) -> None:
        super().__init__()
        k = check_num_components(num_components)
        check_choice("task", task, self.tasks)
        check_choice("expert", expert, NETWORKS)
        check_choice("label_gate", label_gate, LABEL_GATES)
        for name, value in (
            ("latent_dim", latent_dim),
            ("hidden_dim", hidden_dim),
            ("gate_samples", gate_samples),
        ):
            check_int(name, value)
        check_number("min_scale", min_scale)
        check_number("x_weight", x_weight)
        self.task, self.num_components, self.latent_dim = task, k, latent_dim
        self.input_dim, self.output_dim = input_dim, output_dim
        self.label_gate, self.gate_samples, self.min_scale = label_gate, gate_samples, min_scale
        self.x_weight = float(x_weight)
        h = hidden_dim
        # q(z|x): [mean, raw scale]; p(x|z): [mean, raw scale]
        self.encoder = mlp([input_dim, h, h, 2 * latent_dim], activation)
        self.decoder = mlp([latent_dim, h, h, 2 * input_dim], activation)
        # the prior's K components: means spread on a circle of radius 2, unit scales
        angle = 2 * math.pi * torch.arange(k) / k
        means = torch.zeros(k, latent_dim)
        means[:, 0] = 2 * torch.cos(angle) if k > 1 else 0.0
        if latent_dim > 1:
            means[:, 1] = 2 * torch.sin(angle) if k > 1 else 0.0
        self.init_mixture_prior(means, softplus_inverse(torch.ones(k, latent_dim)))
        self.experts = make_experts(input_dim, output_dim, k, expert, h, activation)
        if task == "regression":
            self.raw_scale = nn.Parameter(torch.zeros(k, output_dim))

    @classmethod
    def from_data(cls, data, **options: Any) -> VaeGatedMoE:
        """Build for ``data``; regression experts start apart (init_experts_from_targets)."""
        model = super().from_data(data, **options)
        if model.task == "regression":
            init_experts_from_targets(model, data.train.y)
        return model

    # --- the networks -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = N(loc, scale^2): ``[N, d_z]`` each."""
        loc, raw = self.encoder(x).chunk(2, -1)
        return loc, self.min_scale + F.softplus(raw)

    def decode(self, z: torch.Tensor) -> dist.Distribution:
        """p(x|z), a diagonal Gaussian with event shape ``[D]``."""
        loc, raw = self.decoder(z).chunk(2, -1)
        return dist.Normal(loc, self.min_scale + F.softplus(raw)).to_event(1)

    def expert_scale(self) -> torch.Tensor:
        return self.min_scale + F.softplus(self.raw_scale)

    def expert_components(self, x: torch.Tensor) -> dist.Distribution:
        """p(y|x, c = k) for every k: batch ``[N, K]``."""
        out = self.experts(x)  # [N, K, M]
        if self.task == "classification":
            return dist.Categorical(logits=out)
        return dist.Normal(out, self.expert_scale()).to_event(1)

    def expert_likelihood(self, x: torch.Tensor, c: torch.Tensor) -> dist.Distribution:
        """p(y|x, c) read with the gate value c (any form :func:`select` takes)."""
        out = self.experts(x)
        if self.task == "classification":
            return dist.Categorical(logits=select(out, c, event_dim=1))
        scale = select(self.expert_scale(), c, event_dim=1)
        return dist.Normal(select(out, c, event_dim=1), scale).to_event(1)

    def gate_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(c|x) used for prediction: ``[N, K]``."""
        raise NotImplementedError

    def label_distribution(self, x: torch.Tensor, c: torch.Tensor) -> dist.Distribution:
        if self.label_gate == "cluster":
            return self.expert_likelihood(x, c)
        mixing = dist.Categorical(logits=self.gate_log_probs(x))
        return dist.MixtureSameFamily(mixing, self.expert_components(x))

    def input_scale(self) -> poutine.scale | contextlib.nullcontext:
        """Weights the sites of the input model (``cluster``, ``latent``, ``obs``; the guide uses
        it too) by ``x_weight`` = beta, so that the objective is log p(y|x) + beta ELBO(x)."""
        return (
            contextlib.nullcontext() if self.x_weight == 1.0 else poutine.scale(scale=self.x_weight)
        )

    # --- the Pyro program ---------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        prior_logits = self.log_weights().expand(x.shape[0], self.num_components)
        with data_plate(x, num_data):
            with self.input_scale():
                c = pyro.sample("cluster", dist.Categorical(logits=prior_logits))
                z = pyro.sample("latent", self.latent_given_cluster(c))
                pyro.sample("obs", self.decode(z), obs=x)
            return pyro.sample("label", self.label_distribution(x, c), obs=y)

    # --- closed forms used by metrics, plots and tests ----------------------------------------
    def component_log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y_n|x_n, c = k) for every k: ``[N, K]``."""
        return self.expert_components(x).log_prob(y.unsqueeze(1) if y.dim() == 2 else y[:, None])

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y_n|x_n) = logsumexp_k [log p(k|x_n) + log p(y_n|x_n, k)]: ``[N]``."""
        return torch.logsumexp(self.gate_log_probs(x) + self.component_log_likelihood(x, y), -1)

    def predictive(self, x: torch.Tensor) -> dist.Distribution:
        """The predictive p(y|x) as a distribution (a mixture over the experts)."""
        mixing = dist.Categorical(logits=self.gate_log_probs(x))
        return dist.MixtureSameFamily(mixing, self.expert_components(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predictive mean E[y|x] ``[N, M]`` (regression) or class probabilities ``[N, L]``."""
        return mix_expert_outputs(self.gate_log_probs(x), self.experts(x), self.task)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Mean NLL of p(y|x) per point, and MSE of the predictive mean or accuracy."""
        return evaluate_experts(self, x, y)


@MODELS.register("vade-moe")
class VadeGatedMoE(VaeGatedMoE):
    """ME gated by VaDE: q(c|x) = p(c|z) at a sampled z; test-time gate by Monte Carlo over z."""

    pyro_name = "vade_moe"
    default_guide = "vade-moe"
    exact_guide = "vade-moe"
    learn_weights = True

    def __init__(
        self, input_dim: int, output_dim: int, task: str = "regression", **options: Any
    ) -> None:
        if options.get("label_gate", "cluster") != "cluster":
            raise ConfigError("vade-moe has no q(c|x) network: its label reads the cluster site")
        super().__init__(input_dim, output_dim, task, **options)

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {k: v for k, v in VaeGatedMoE.options().items() if k != "label_gate"}

    def gate_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log E_{q(z|x)}[p(c|z)] by ``gate_samples`` draws of z (Singh et al., sec. 5.1)."""
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn((self.gate_samples,) + loc.shape, dtype=loc.dtype)
        log_post = self.cluster_given_latent(z)  # [S, N, K]
        return torch.logsumexp(log_post, 0) - math.log(self.gate_samples)


@MODELS.register("dvmoe")
class DVMoE(VaeGatedMoE):
    """ME gated by DMVAE (DVMoE): own q(c|x) network; p(y|x) = sum_c q(c|x) p(y|x, c).

    The input ELBO is weighted by ``x_weight`` = :data:`DVMOE_X_WEIGHT` by default (Singh et al.'s
    objective is ``x_weight=1``; see the module docstring for why and what it costs)."""

    pyro_name = "dvmoe"
    default_guide = "dvmoe"
    exact_guide = "dvmoe"
    learn_weights = False

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        task: str = "regression",
        *,
        label_gate: str = "encoder",
        x_weight: float = DVMOE_X_WEIGHT,
        **options: Any,
    ) -> None:
        super().__init__(
            input_dim, output_dim, task, label_gate=label_gate, x_weight=x_weight, **options
        )
        h = self.hparams["hidden_dim"]
        self.gate = mlp([input_dim, h, h, self.num_components], self.hparams["activation"])

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {**VaeGatedMoE.options(), "label_gate": "encoder", "x_weight": DVMOE_X_WEIGHT}

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log q(c|x): ``[N, K]``."""
        return self.gate(x)

    def gate_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.gate_logits(x), -1)
