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

Initialisation (:meth:`GaussianMixture.pretrain`, the run's first step, seeded with the run's
seed): ``init="kmeans++"`` (default) draws ``n_init`` k-means++ seedings (Arthur & Vassilvitskii
2007), refines each by Lloyd's k-means iterations, sets (pi, mu, Sigma) to the weights, means and
covariances of the resulting hard clusters, optionally runs ``em_iters`` closed-form EM steps
(Dempster, Laird & Rubin 1977; Bishop sec. 9.2.2) from there, and keeps the restart with the
highest training log-likelihood (passing over restarts in which a component collapsed onto a
subspace, a singularity of the likelihood); gradient training then continues from it, and early
stopping on the validation split keeps the start if training does not improve on it. With the
default ``em_iters=100`` (EM stops earlier once an iteration gains less than 1e-3 per point) the
start is EM's fixed point, as scikit-learn's ``GaussianMixture`` from its default k-means start;
``em_iters=0`` starts from the k-means clusters and leaves the rest to gradient training.
``init="random"``: means at K distinct random rows, once.

References:
    1. C. M. Bishop, "Pattern Recognition and Machine Learning", 2006, ch. 9.
    2. D. Arthur, S. Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
    3. A. P. Dempster, N. M. Laird, D. B. Rubin, "Maximum Likelihood from Incomplete Data via the
       EM Algorithm", JRSS B, 1977.
    4. G. Singh, A. Panda, A. Gajbhiye, "Mixture of Experts using Discrete VAE" (undated report).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_moe.base import PyroModel, check_num_components, data_plate, register_module
from pyro_moe.errors import ConfigError
from pyro_moe.gate import select
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_choice, check_int, check_number

COVARIANCES = ("full", "diag")
INITS = ("kmeans++", "random")
#: EM stops when the mean training log-likelihood rises by less than this (scikit-learn's tol)
EM_TOLERANCE = 1e-3
#: a restart with a covariance eigenvalue below this times the smallest eigenvalue of the data's
#: covariance has collapsed onto a subspace (e.g. rows that share a value) and is passed over
COLLAPSE = 1e-3


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
        init: str = "kmeans++",
        n_init: int = 5,
        em_iters: int = 100,
    ) -> None:
        super().__init__()
        k = check_num_components(num_components)
        check_choice("covariance", covariance, COVARIANCES)
        check_choice("init", init, INITS)
        check_number("min_scale", min_scale)
        check_int("n_init", n_init)
        check_int("em_iters", em_iters, minimum=0)
        self.num_components, self.input_dim = k, input_dim
        self.covariance, self.min_scale = covariance, min_scale
        self.init, self.n_init, self.em_iters = init, n_init, em_iters
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

    @torch.no_grad()
    def pretrain(self, x: torch.Tensor, seed: int) -> dict[str, Any] | None:
        """The ``kmeans++`` start (module docstring) from ``n_init`` restarts seeded with
        ``seed``, best training log-likelihood kept among the restarts where no component has
        collapsed (:func:`has_collapsed`: a singularity of the likelihood on a subspace, Bishop
        sec. 9.2.1, not a fit); nothing for
        ``init="random"``. Returns the start's per-point log-likelihood, every restart's, and how
        many restarts collapsed."""
        if self.init == "random":
            return None
        generator = torch.Generator().manual_seed(seed)
        starts = [self.restart(x, generator) for _ in range(self.n_init)]
        scores = [score for score, _ in starts]
        collapsed = [has_collapsed(params[2], x) for _, params in starts]
        usable = [s if not c else -math.inf for s, c in zip(scores, collapsed, strict=True)]
        best = int(np.argmax(usable if not all(collapsed) else scores))
        self.set_parameters(*starts[best][1])
        return {
            "log_likelihood": scores[best],
            "restart_log_likelihoods": scores,
            "collapsed_restarts": sum(collapsed),
        }

    def restart(self, x: torch.Tensor, generator: torch.Generator) -> tuple[float, tuple]:
        """One k-means++ / Lloyd / EM start: (mean training log-likelihood, parameters)."""
        centres = lloyd(x, kmeans_plus_plus(x, self.num_components, generator))
        resp = F.one_hot(nearest(x, centres), self.num_components).to(x.dtype)
        params = mixture_m_step(x, resp, self.covariance, self.min_scale)
        previous = -math.inf
        for _ in range(self.em_iters):
            log_joint = mixture_log_joint(x, *params)  # [N, K]
            score = torch.logsumexp(log_joint, -1).mean().item()
            if score - previous < EM_TOLERANCE:
                break
            previous = score
            params = mixture_m_step(x, log_joint.softmax(-1), self.covariance, self.min_scale)
        score = torch.logsumexp(mixture_log_joint(x, *params), -1).mean().item()
        return score, params

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
        """Set pi, mu, Sigma (full ``[K, D, D]`` matrices, diagonal ones for ``"diag"``); the
        Cholesky diagonal is kept above ``min_scale``."""
        self.pi_logits.copy_(torch.log(weights.clamp_min(1e-12)))
        self.loc.copy_(means)
        lower = torch.linalg.cholesky(covariances)
        diag = torch.diagonal(lower, dim1=-2, dim2=-1) - self.min_scale
        self.raw_diag.copy_(softplus_inverse(diag.clamp_min(1e-6)))
        if self.covariance == "full":
            self.raw_lower.copy_(lower)

    # --- the Pyro program ---------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
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


def has_collapsed(covariances: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a component's covariance (``[K, D, D]``) has an eigenvalue below ``COLLAPSE``
    times the smallest eigenvalue of the data's covariance: it has collapsed onto a subspace
    (clusters of real data measured 0.02 to 1.5 times that eigenvalue; collapsed ones 5e-5)."""
    data_cov = torch.cov(x.T.to(covariances.dtype)).reshape(x.shape[1], x.shape[1])
    floor = COLLAPSE * torch.linalg.eigvalsh(data_cov).min()
    return bool(torch.linalg.eigvalsh(covariances).min() < floor)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: the first centre a uniform row, each next one a row drawn with
    probability proportional to its squared distance to the nearest centre so far: ``[K, D]``."""
    first = torch.randint(len(x), (1,), generator=generator)
    centres = [x[first[0]]]
    d2 = ((x - centres[0]) ** 2).sum(-1)
    for _ in range(1, k):
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        row = torch.multinomial(weights, 1, generator=generator)[0]
        centres.append(x[row])
        d2 = torch.minimum(d2, ((x - x[row]) ** 2).sum(-1))
    return torch.stack(centres)


def nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The index of each row's nearest centre: ``[N]``."""
    return torch.cdist(x, centres).argmin(-1)


def lloyd(x: torch.Tensor, centres: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """Lloyd's k-means iterations from ``centres`` until the assignment stops changing (an empty
    cluster keeps its centre): ``[K, D]``."""
    assign = nearest(x, centres)
    for _ in range(max_iter):
        one_hot = F.one_hot(assign, len(centres)).to(x.dtype)  # [N, K]
        counts = one_hot.sum(0)
        sums = one_hot.T @ x
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        new = nearest(x, centres)
        if torch.equal(new, assign):
            break
        assign = new
    return centres


def mixture_m_step(
    x: torch.Tensor, resp: torch.Tensor, covariance: str, min_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The closed-form M step (Bishop eq. 9.24-9.26) from responsibilities r ``[N, K]``::

        N_k = sum_n r_nk,  pi_k = N_k / N,  mu_k = sum_n r_nk x_n / N_k,
        Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k + (min_scale^2 + 1e-6) I

    (diagonal only for ``"diag"``); a component with N_k < 1e-8 gets the data's covariance.
    Returns (pi ``[K]``, mu ``[K, D]``, Sigma ``[K, D, D]``)."""
    counts = resp.sum(0) + 1e-10  # [K]
    means = (resp.T @ x) / counts[:, None]  # [K, D]
    centred = x[None] - means[:, None]  # [K, N, D]
    weighted = resp.T[..., None] * centred  # [K, N, D]
    cov = weighted.transpose(-1, -2) @ centred / counts[:, None, None]  # [K, D, D]
    empty = counts < 1e-8
    if empty.any():
        cov[empty] = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    if covariance == "diag":
        cov = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    cov = cov + (min_scale**2 + 1e-6) * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return counts / counts.sum(), means, cov


def mixture_log_joint(
    x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor
) -> torch.Tensor:
    """log pi_k + log N(x_n | mu_k, Sigma_k): ``[N, K]``."""
    component = dist.MultivariateNormal(means, covariance_matrix=covariances)
    return torch.log(weights.clamp_min(1e-12)) + component.log_prob(x[:, None])


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
