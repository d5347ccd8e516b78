"""Deep latent Gaussian mixtures (DLGMM, DLDPMM) and their baselines (Gauss-VAE, SB-VAE).

DLGMM (Nalisnick, Hertel & Smyth 2016), for each data point n, K components::

    v_nk ~ Beta(alpha, (K - k) alpha),  k = 1..K-1           site "weights"  [N, K-1]
    pi_n = SB(v_n)                     (pi ~ Dir(alpha 1_K), the stick-breaking construction)
    c_n ~ Categorical(pi_n)                                   site "cluster"  [N]
    z_n | c_n ~ N(m_{c_n}, I_L)                               site "latent"   [N, L]
    x_n | z_n ~ Bernoulli(sigmoid(f(z_n)))                    site "obs"      [N, D]

with SB(v)_k = v_k prod_{j<k} (1 - v_j) and the last stick taking the rest,
SB(v)_K = prod_{j<K} (1 - v_j). The component means m_k are fixed: all zero (the paper's
likelihood experiments: every Gaussian prior a standard normal) or, with ``prior_spread`` s > 0,
m_k = linspace(-s, s, K)_k in every coordinate (its qualitative experiment, s = 1.5, K = 5).
DLDPMM is the same story with the Dirichlet-process sticks v_nk ~ Beta(1, alpha0), truncated at
T components (the T-th stick takes the rest). The guide (``dlgmm``) is the paper's posterior::

    q(v_nk | x_n) = Kumaraswamy(a_k(x_n), b_k(x_n))            site "weights"
    q(c_n | v_n) = Categorical(SB(v_n))                        site "cluster"
    q(z_n | c_n, x_n) = N(mu_{c_n}(x_n), diag(sigma_{c_n}(x_n)^2))   site "latent"

so that q(z | v, x) = sum_k SB(v)_k N(z; mu_k(x), sigma_k(x)^2), a Gaussian mixture posterior.
The encoder ``D - hidden - (2KL + 2(K-1))`` gives every parameter in one pass, the decoder
``L - hidden[::-1] - D`` runs once per component on the ``[N, K, L]`` samples (one batched pass,
no loop over K).

The collapsed ELBO (:meth:`LatentGaussianMixture.elbo`) sums over the components with the
weights instead of sampling c; since p(c|v) = q(c|v) cancels and the rest is linear in pi, the
expectation over v is exact through the posterior mean weights
E_q[pi_k] = SB(E_q[v])_k (independent sticks, E of Kumaraswamy in closed form)::

    ELBO(x) = sum_k E_q[pi_k] ( E_{q_k}[log p(x|z)] - KL(q_k(z|x) || N(m_k, I)) )
              - sum_k KL(Kumaraswamy(a_k, b_k) || Beta(alpha_k, beta_k))

with one reparameterised z per component (the paper's Eq. 1 with S = 1 and its mean weights
mu_pi; we take the per-component Gaussian KL in closed form where Eq. 1 keeps the mixture's
entropy term, which makes this a lower bound on Eq. 1 and an exact ELBO of the story above).
The Kumaraswamy-Beta KL is :func:`pyro_moe.distributions.kl_kumaraswamy_beta`.

Since the prior is linear in pi too, v integrates out of p(x):
p(x) = int pbar(z) p(x|z) dz with pbar(z) = sum_k E_p[pi_k] N(z; m_k, I). The importance
sampler (:meth:`LatentGaussianMixture.log_importance_weights`) draws z from
r(z|x) = sum_k E_q[pi_k] q_k(z|x) and weighs by pbar(z) p(x|z) / r(z|x).

Gauss-VAE is the K = 1 case (no ``weights``/``cluster`` sites). SB-VAE (Nalisnick & Smyth 2017)
has the weights themselves as the code::

    v_nk ~ Beta(1, alpha0), k = 1..T-1                        site "latent"  [N, T-1]
    x_n | v_n ~ Bernoulli(sigmoid(f(SB(v_n))))                site "obs"
    q(v_nk | x_n) = Kumaraswamy(a_k(x_n), b_k(x_n))

Shapes under ``enum`` (max_plate_nesting = 1, the guide's ``cluster`` enumerated)::

    site      guide shape   model shape
    weights   [N, K-1]      [N, K-1]
    cluster   [K, 1]        [K, 1]          (enumerated at dim -2)
    latent    [K, N, L]     [K, N, L]
    obs                     [K, N, D]

References:
    1. E. Nalisnick, L. Hertel, P. Smyth, "Approximate Inference for Deep Latent Gaussian
       Mixtures", NIPS Workshop on Bayesian Deep Learning 2016.
    2. E. Nalisnick, P. Smyth, "Stick-Breaking Variational Autoencoders", ICLR 2017.
    3. D. M. Blei, M. I. Jordan, "Variational Inference for Dirichlet Process Mixtures",
       Bayesian Analysis 2006 (truncated DP posteriors).
    4. D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_moe.models.vae import parse_sizes

from pyro_moe.base import PyroModel, data_plate, register_module
from pyro_moe.distributions import Kumaraswamy, kl_kumaraswamy_beta
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator
from pyro_moe.gate import select
from pyro_moe.nn import mlp
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_int, check_number

#: the smallest Kumaraswamy parameter the encoder gives (softplus + this)
MIN_CONCENTRATION = 1e-2
SMOKE = {"data": "digits", "data_options": {"n": 120}, "estimator": "enum"}


def stick_breaking(v: torch.Tensor) -> torch.Tensor:
    """Weights ``[..., K]`` from sticks ``v`` ``[..., K-1]``: pi_k = v_k prod_{j<k} (1 - v_j),
    the last pi_K = prod_{j<K} (1 - v_j) takes the rest, so sum_k pi_k = 1."""
    ones = v.new_ones(v.shape[:-1] + (1,))
    rest = torch.cumprod(torch.cat([ones, 1 - v], -1), -1)  # [..., K]: prod_{j<k} (1 - v_j)
    return torch.cat([v, ones], -1) * rest


def dirichlet_sticks(alpha: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Beta(alpha, (K - k) alpha), k = 1..K-1: the sticks whose SB(v) ~ Dir(alpha 1_K)."""
    remaining = torch.arange(k - 1, 0, -1, dtype=torch.get_default_dtype())
    return torch.full((k - 1,), float(alpha)), alpha * remaining


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, diag(scale^2)) || N(mean, I)) summed over the last dim."""
    return 0.5 * (scale**2 + (loc - mean) ** 2 - 1 - 2 * scale.log()).sum(-1)


def normal_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, diag(scale^2)) summed over the last dim."""
    return dist.Normal(loc, scale).log_prob(z).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last dim (x may be fractional)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )


class StickBreakingCode(PyroModel):
    """What the stick-breaking models share: an encoder, a Bernoulli decoder and the hooks the
    benchmarks read (``elbo``, ``log_importance_weights``, ``embed``)."""

    max_plate_nesting = 1
    monitor = "valid_loss"
    tasks = ("clustering", "classification")

    def _networks(self, input_dim: int, code_dim: int, encoder_out: int, hidden, activation):
        sizes = parse_sizes(hidden)
        self.input_dim = input_dim
        self.encoder = mlp([input_dim, *sizes, encoder_out], activation)
        self.decoder = mlp([code_dim, *sizes[::-1], input_dim], activation)

    def obs_dist(self, code: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.decoder(code), validate_args=False).to_event(1)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """One reparameterised estimate of the ELBO of each row: ``[N]``."""
        raise NotImplementedError

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log p(x, code) - log r(code|x) for ``num_samples`` draws per row: ``[S, N]``."""
        raise NotImplementedError

    def validation_estimator(self) -> NegativeELBO:
        return NegativeELBO()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.decoder(self.embed(x)))


class LatentGaussianMixture(StickBreakingCode):
    """The DLGMM family: a K-component Gaussian mixture posterior with stick-breaking weights."""

    pyro_name = "dlgmm"
    default_guide = "dlgmm"
    exact_guide = "dlgmm"

    def _build(
        self,
        input_dim: int,
        num_components: int,
        latent_dim: int,
        hidden: Sequence[int] | str,
        prior_spread: float,
        activation: str,
        sticks: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        k = check_int("the number of components", num_components)
        latent_dim = check_int("latent_dim", latent_dim)
        check_number("prior_spread", prior_spread, positive=False)
        self.num_components, self.latent_dim = k, latent_dim
        self._networks(input_dim, latent_dim, 2 * k * latent_dim + 2 * (k - 1), hidden, activation)
        spread = torch.linspace(-prior_spread, prior_spread, k) if k > 1 else torch.zeros(1)
        self.register_buffer("prior_means", spread[:, None].expand(k, latent_dim).clone())
        self.register_buffer("stick_alpha", sticks[0])
        self.register_buffer("stick_beta", sticks[1])

    # --- networks -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """loc, scale ``[N, K, L]`` of q(z|c, x) and Kumaraswamy a, b ``[N, K-1]`` of q(v|x)."""
        k, dim = self.num_components, self.latent_dim
        out = self.encoder(x)
        gauss, sticks = out[..., : 2 * k * dim], out[..., 2 * k * dim :]
        loc, log_var = gauss.reshape(*x.shape[:-1], k, 2 * dim).chunk(2, dim=-1)
        a, b = (MIN_CONCENTRATION + F.softplus(s) for s in sticks.chunk(2, dim=-1))
        return loc, torch.exp(0.5 * log_var.clamp(-20.0, 10.0)), a, b

    def mean_weights(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """E_q[pi] = SB(E_q[v]) for independent Kumaraswamy sticks: ``[N, K]``."""
        return stick_breaking(Kumaraswamy(a, b).mean)

    def stick_kl(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """sum_k KL(Kumaraswamy(a_k, b_k) || Beta(alpha_k, beta_k)): ``[N]``."""
        alpha, beta = self.stick_alpha.expand_as(a), self.stick_beta.expand_as(a)
        return kl_kumaraswamy_beta(a, b, alpha, beta).sum(-1)

    # --- objectives ---------------------------------------------------------------------------
    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale, a, b = self.encode(x)
        z = loc + scale * torch.randn_like(loc)  # [N, K, L]
        log_lik = bernoulli_log_likelihood(self.decoder(z), x[..., None, :])  # [N, K]
        per_component = log_lik - gaussian_kl(loc, scale, self.prior_means)  # [N, K]
        return (self.mean_weights(a, b) * per_component).sum(-1) - self.stick_kl(a, b)

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        loc, scale, a, b = self.encode(x)  # [N, K, L], [N, K-1]
        log_w = self.mean_weights(a, b).clamp_min(1e-30).log()  # [N, K]
        c = torch.distributions.Categorical(logits=log_w).sample((num_samples,))  # [S, N]
        pick = c[..., None, None].expand(num_samples, len(x), 1, self.latent_dim)
        z_loc = loc.expand(num_samples, *loc.shape).gather(-2, pick).squeeze(-2)
        z_scale = scale.expand(num_samples, *scale.shape).gather(-2, pick).squeeze(-2)
        z = z_loc + z_scale * torch.randn_like(z_loc)  # [S, N, L]
        log_r = torch.logsumexp(log_w + normal_log_density(z[..., None, :], loc, scale), -1)
        prior_w = stick_breaking(self.stick_alpha / (self.stick_alpha + self.stick_beta))
        ones = torch.ones_like(self.prior_means)
        log_prior = normal_log_density(z[..., None, :], self.prior_means, ones)  # [S, N, K]
        log_p = torch.logsumexp(prior_w.log() + log_prior, -1)
        return log_p + bernoulli_log_likelihood(self.decoder(z), x) - log_r

    # --- the Pyro program ---------------------------------------------------------------------
    def prior_latent(self, n: int) -> torch.Tensor:
        """``weights``, ``cluster`` and ``latent`` of the generative story, inside the plate."""
        ones = self.prior_means.new_ones(n, self.latent_dim)
        if self.num_components == 1:
            return pyro.sample("latent", dist.Normal(ones * self.prior_means[0], 1.0).to_event(1))
        shape = (n, self.num_components - 1)
        sticks = dist.Beta(self.stick_alpha.expand(shape), self.stick_beta.expand(shape))
        v = pyro.sample("weights", sticks.to_event(1))
        c = pyro.sample("cluster", dist.Categorical(probs=stick_breaking(v)))
        mean = select(self.prior_means, c, event_dim=1)
        return pyro.sample("latent", dist.Normal(mean, ones).to_event(1))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        with data_plate(x, num_data):
            z = self.prior_latent(x.shape[0])
            return pyro.sample("obs", self.obs_dist(z), obs=x)

    # --- what metrics and figures read ---------------------------------------------------------
    def embed(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """The posterior mean code E_q[z|x] = sum_k E_q[pi_k] mu_k(x): ``[N, L]``."""
        with torch.no_grad():
            parts = []
            for rows in x.split(batch_size):
                loc, _, a, b = self.encode(rows)
                parts.append((self.mean_weights(a, b)[..., None] * loc).sum(-2))
            return torch.cat(parts)

    def predict_cluster(self, x: torch.Tensor) -> torch.Tensor | None:
        """The component of largest posterior mean weight (None for K = 1)."""
        if self.num_components == 1:
            return None
        with torch.no_grad():
            _, _, a, b = self.encode(x)
            return self.mean_weights(a, b).argmax(-1)

    def cluster_samples(self, per_cluster: int = 8, seed: int = 0) -> torch.Tensor:
        """Decoder means sigmoid(f(z)) for z ~ N(m_k, I): ``[K, per_cluster, D]``."""
        generator = torch.Generator().manual_seed(seed)
        shape = (self.num_components, per_cluster, self.latent_dim)
        eps = torch.randn(shape, generator=generator).to(self.prior_means)
        with torch.no_grad():
            return torch.sigmoid(self.decoder(self.prior_means[:, None, :] + eps))


@MODELS.register("dlgmm")
class DLGMM(LatentGaussianMixture):
    """Deep latent Gaussian mixture: Dir(alpha) stick-breaking weights, Gaussian mixture q(z|x)."""

    smoke_spec = {**SMOKE, "model_options": {"num_components": 3, "latent_dim": 2, "hidden": "8"}}

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        num_components: int = 3,
        alpha: float = 1.0,
        latent_dim: int = 25,
        hidden: Sequence[int] | str = (500,),
        prior_spread: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_number("alpha", alpha)
        k = check_int("num_components", num_components)
        sticks = dirichlet_sticks(alpha, k)
        self._build(input_dim, k, latent_dim, hidden, prior_spread, activation, sticks)


@MODELS.register("dldpmm")
class DLDPMM(LatentGaussianMixture):
    """Deep latent Dirichlet-process mixture: Beta(1, alpha0) sticks, posterior truncated at T."""

    smoke_spec = {**SMOKE, "model_options": {"truncation": 4, "latent_dim": 2, "hidden": "8"}}

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        truncation: int = 17,
        alpha0: float = 1.0,
        latent_dim: int = 25,
        hidden: Sequence[int] | str = (500,),
        prior_spread: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_number("alpha0", alpha0)
        t = check_int("truncation", truncation)
        sticks = (torch.ones(t - 1), torch.full((t - 1,), float(alpha0)))
        self._build(input_dim, t, latent_dim, hidden, prior_spread, activation, sticks)


@MODELS.register("gauss-vae")
class GaussVAE(LatentGaussianMixture):
    """Gauss-VAE: the single-Gaussian DLGM (the K = 1 DLGMM), Bernoulli decoder."""

    smoke_spec = {**SMOKE, "model_options": {"latent_dim": 2, "hidden": "8"}}

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        latent_dim: int = 25,
        hidden: Sequence[int] | str = (500,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        sticks = (torch.ones(0), torch.ones(0))
        self._build(input_dim, 1, latent_dim, hidden, 0.0, activation, sticks)


@MODELS.register("sb-vae")
class StickBreakingVAE(StickBreakingCode):
    """Stick-breaking VAE: the code is SB(v) with Kumaraswamy q(v|x) and Beta(1, alpha0) sticks."""

    pyro_name = "sb_vae"
    default_guide = "sb-vae"
    exact_guide = "sb-vae"
    smoke_spec = {**SMOKE, "model_options": {"truncation": 4, "hidden": "8"}}

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        truncation: int = 25,
        alpha0: float = 5.0,
        hidden: Sequence[int] | str = (500,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_number("alpha0", alpha0)
        self.truncation = check_int("truncation", truncation, 2)
        self.alpha0 = float(alpha0)
        self._networks(input_dim, self.truncation, 2 * (self.truncation - 1), hidden, activation)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kumaraswamy a, b of q(v|x): ``[N, T-1]`` each."""
        a, b = self.encoder(x).chunk(2, dim=-1)
        return MIN_CONCENTRATION + F.softplus(a), MIN_CONCENTRATION + F.softplus(b)

    def prior(self, like: torch.Tensor) -> dist.Beta:
        return dist.Beta(torch.ones_like(like), torch.full_like(like, self.alpha0))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.encode(x)
        v = Kumaraswamy(a, b).rsample()
        kl = kl_kumaraswamy_beta(a, b, torch.ones_like(a), torch.full_like(a, self.alpha0))
        return bernoulli_log_likelihood(self.decoder(stick_breaking(v)), x) - kl.sum(-1)

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        a, b = self.encode(x)
        q = Kumaraswamy(a, b)
        v = q.rsample((num_samples,))  # [S, N, T-1]
        log_ratio = (self.prior(v).log_prob(v) - q.log_prob(v)).sum(-1)
        return log_ratio + bernoulli_log_likelihood(self.decoder(stick_breaking(v)), x)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        with data_plate(x, num_data):
            like = x.new_zeros(x.shape[0], self.truncation - 1)
            v = pyro.sample("latent", self.prior(like).to_event(1))
            return pyro.sample("obs", self.obs_dist(stick_breaking(v)), obs=x)

    def embed(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """The posterior mean weights E_q[pi|x] = SB(E_q[v|x]): ``[N, T]``."""
        with torch.no_grad():
            return torch.cat(
                [stick_breaking(Kumaraswamy(*self.encode(r)).mean) for r in x.split(batch_size)]
            )


class NegativeELBO(Estimator):
    """The model's own reparameterised ELBO (:meth:`StickBreakingCode.elbo`: for the mixtures the
    sum over components done exactly with the mean weights, KLs in closed form) as the trainer's
    objective: minus the batch ELBO times ``num_data / len(x)``. Only for these models, so not in
    the estimator registry."""

    name = "collapsed-elbo"
    needs_guide_site = False
    unbiased_for = None
    bias = "none for the models' own ELBO; not an estimator of a Pyro program's objective"
    vectorisable = False

    def check(self, guide: Any) -> None:
        if not isinstance(getattr(guide, "target", None), StickBreakingCode):
            raise ConfigError("the collapsed ELBO trains only DLGMM, DLDPMM, Gauss-VAE and SB-VAE")

    def loss(self, model, guide, x, y=None, num_data=None) -> torch.Tensor:
        return -guide.target.elbo(x).sum() * ((num_data or len(x)) / len(x))

    def value(self, model, guide, x, y=None) -> float:
        """Minus the summed ELBO of the rows of ``x``."""
        with torch.no_grad():
            return -guide.target.elbo(x).sum().item()
