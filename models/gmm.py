"""Gaussian mixture model with the assignment enumerated (Bishop ch. 9; Singh et al. sec. 2.2).

Generative story, for each data point n::

    c_n ~ Categorical(pi)                               site "cluster"
    x_n | c_n = k ~ N(mu_k, Sigma_k)                    site "obs"

with Sigma_k full (``covariance="full"``, a Cholesky factor L_k with a softplus diagonal) or
diagonal (``"diag"``). The parameters are point estimates fitted by gradient ascent on the exact
marginal log-likelihood log p(x) = sum_n logsumexp_k [log pi_k + log N(x_n | mu_k, Sigma_k)]
(``enum`` with guide ``none``: the MAP estimate under flat priors), or on the ELBO with the exact
posterior p(c|x) as guide (``gmm-posterior``) for sampling estimators. :func:`fit_em` runs the
EM baseline (scikit-learn's ``GaussianMixture``) on the same data.

References:
    1. C. M. Bishop, "Pattern Recognition and Machine Learning", 2006, ch. 9.
    2. G. Singh, A. Panda, A. Gajbhiye, "Mixture of Experts using Discrete VAE" (undated report).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_moe.base import PyroModel, check_num_components, data_plate
from pyro_moe.errors import ConfigError
from pyro_moe.gate import select
from pyro_moe.registry import MODELS

COVARIANCES = ("full", "diag")


def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


@MODELS.register("gmm")
class GaussianMixture(PyroModel):
    """Gaussian mixture, full or diagonal covariance, assignment summed out exactly."""

    pyro_name = "gmm"
    default_guide = "gmm-posterior"
    exact_guide = "none"
    monitor = "valid_loss"
    tasks = ("clustering", "classification")
    smoke_spec = {
        "data": "spirals",
        "data_options": {"n": 90},
        "model_options": {"num_components": 3},
        "estimator": "enum",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        num_components: int = 3,
        covariance: str = "full",
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(num_components=num_components, covariance=covariance, min_scale=min_scale)
        k = check_num_components(num_components)
        if covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if min_scale <= 0:
            raise ConfigError(f"min_scale must be > 0, got {min_scale}")
        self.num_components, self.input_dim = k, input_dim
        self.covariance, self.min_scale = covariance, min_scale
        self.pi_logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(torch.randn(k, input_dim))
        self.raw_diag = nn.Parameter(torch.zeros(k, input_dim))  # softplus -> scale / chol diag
        if covariance == "full":
            self.raw_lower = nn.Parameter(torch.zeros(k, input_dim, input_dim))

    @classmethod
    def from_data(cls, data: Any, **options: Any) -> GaussianMixture:
        """Build for ``data``; means start at K distinct random training rows, scales at the
        data's standard deviation."""
        model = super().from_data(data, **options)
        model.init_from_data(data.train.x)
        return model

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        rows = torch.randperm(len(x))[: self.num_components]
        self.loc.copy_(x[rows] if len(rows) == self.num_components else x.mean(0) + self.loc)
        scale = x.std(0).clamp_min(2 * self.min_scale) - self.min_scale
        self.raw_diag.copy_(softplus_inverse(scale).expand_as(self.raw_diag))

    # --- parameters ---------------------------------------------------------------------------
    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors L_k of Sigma_k = L_k L_k^T: ``[K, D, D]``."""
        diag = self.min_scale + F.softplus(self.raw_diag)
        if self.covariance == "diag":
            return torch.diag_embed(diag)
        return torch.tril(self.raw_lower, -1) + torch.diag_embed(diag)

    def covariances(self) -> torch.Tensor:
        lower = self.scale_tril()
        return lower @ lower.transpose(-1, -2)

    def component_dist(self) -> dist.Distribution:
        """The K components as one batched distribution, batch shape ``[K]``."""
        if self.covariance == "diag":
            scale = self.min_scale + F.softplus(self.raw_diag)
            return dist.Normal(self.loc, scale).to_event(1)
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril())

    @torch.no_grad()
    def set_parameters(
        self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor
    ) -> None:
        """Set pi, mu, Sigma (full ``[K, D, D]`` matrices, diagonal ones for ``"diag"``)."""
        self.pi_logits.copy_(torch.log(weights))
        self.loc.copy_(means)
        lower = torch.linalg.cholesky(covariances)
        diag = torch.diagonal(lower, dim1=-2, dim2=-1) - self.min_scale
        self.raw_diag.copy_(softplus_inverse(diag))
        if self.covariance == "full":
            self.raw_lower.copy_(lower)

    # --- the Pyro program ---------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        pyro.module(self.pyro_name, self)
        logits = self.pi_logits.expand(x.shape[0], -1)
        if self.covariance == "diag":
            scale = self.min_scale + F.softplus(self.raw_diag)
        else:
            scale_tril = self.scale_tril()
        with data_plate(x, num_data):
            c = pyro.sample("cluster", dist.Categorical(logits=logits))
            loc = select(self.loc, c, event_dim=1)
            if self.covariance == "diag":
                obs_dist = dist.Normal(loc, select(scale, c, event_dim=1)).to_event(1)
            else:
                obs_dist = dist.MultivariateNormal(loc, scale_tril=select(scale_tril, c, 2))
            return pyro.sample("obs", obs_dist, obs=x)

    # --- closed forms -------------------------------------------------------------------------
    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(x_n | mu_k, Sigma_k): ``[N, K]``."""
        return torch.log_softmax(self.pi_logits, -1) + self.component_dist().log_prob(x[:, None])

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.joint_log_prob(x), -1)

    def cluster_logits(self, x: torch.Tensor) -> torch.Tensor:
        """log p(c|x) up to a constant: ``[N, K]``."""
        return self.joint_log_prob(x)

    def predict_cluster(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.cluster_logits(x).argmax(-1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        from pyro_moe import metrics

        with torch.no_grad():
            result = {"nll": -self.log_likelihood(x).mean().item()}
        if y is not None and not y.is_floating_point():
            result.update(metrics.clustering_scores(y, self.predict_cluster(x)))
        return result


def fit_em(
    x: torch.Tensor | np.ndarray,
    num_components: int,
    covariance: str = "full",
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 200,
):
    """The EM baseline: scikit-learn's ``GaussianMixture`` fitted to ``x`` (returned fitted)."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    if covariance not in COVARIANCES:
        raise ConfigError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return SkGaussianMixture(
        num_components,
        covariance_type=covariance,
        random_state=seed,
        n_init=n_init,
        max_iter=max_iter,
        reg_covar=1e-6,
    ).fit(arr.astype(np.float64))
