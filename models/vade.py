"""Variational Deep Embedding, VaDE (Jiang et al. 2017; as used by Singh et al., sec. 3).

Generative story, for each data point n::

    c_n ~ Categorical(pi)                               site "cluster"
    z_n | c_n = k ~ N(mu_k, diag(sigma_k^2))            site "latent"
    x_n | z_n ~ p(x | f(z_n))                           site "obs"  (Bernoulli or Gaussian)

Variational family (guide ``vade``): q(z|x) = N(mu(x), diag(sigma(x)^2)) from the encoder, and

    q(c|x) = p(c | z^) = pi_c N(z^ | mu_c, sigma_c^2) / sum_c' pi_c' N(z^ | mu_c', sigma_c'^2)

at the sample z^ ~ q(z|x) (the paper's choice, which zeroes the KL(q(c|x) || p(c|z)) term at z^).
With ``enum`` the sum over c is done exactly, so the ELBO per point is

    E_q(z|x) [ log p(x|z) + log sum_c pi_c N(z | mu_c, sigma_c^2) - log q(z|x) ].

Recipe (paper): pretrain encoder mean and decoder as an autoencoder
(:meth:`~pyro_moe.models.vae.VAE.pretrain_autoencoder`), then fit a diagonal GMM to the embedded
data and start the prior (pi, mu, sigma) there (:meth:`VaDE.init_prior`);
:func:`pretrain_and_init` does both. On MNIST the paper uses 784-500-500-2000-10. With the option
``pretrain_epochs > 0`` a run does it as its first step (:meth:`VaDE.pretrain`, the run's seed),
recorded in the checkpoint and not repeated by a resume.

References:
    1. Z. Jiang, Y. Zheng, H. Tan, B. Tang, H. Zhou, "Variational Deep Embedding: An
       Unsupervised and Generative Approach to Clustering", IJCAI 2017.
    2. G. Singh, A. Panda, A. Gajbhiye, "Mixture of Experts using Discrete VAE" (undated report).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_moe.models.gmm import fit_em, softplus_inverse
from pyro_moe.models.vae import VAE
from torch import nn

from pyro_moe.base import check_num_components
from pyro_moe.gate import select
from pyro_moe.manifold import manifold_clusters, moment_matched_mixture
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_choice, check_int, check_number

#: how :meth:`VaDE.init_prior` starts the prior from the embedding
PRIOR_INITS = ("gmm", "gmm-full", "umap")


class MixturePrior:
    """The mixture prior of VaDE and DMVAE, also used by the VAE-gated experts
    (:mod:`pyro_moe.models.vae_moe`)::

        p(c) = pi_c,    p(z|c) = N(z; mu_c, diag(sigma_c^2)),    sigma_c = min_scale + softplus(r_c)

    with pi learned (``learn_weights``) or uniform. A mixin for an ``nn.Module`` that has
    ``min_scale``: :meth:`init_mixture_prior` registers ``pi_logits``, ``prior_loc`` and
    ``raw_prior_scale``. A relaxed one-hot c gives N(sum_k c_k mu_k, diag(sum_k c_k sigma_k)^2)
    (:func:`pyro_moe.gate.select`), which tends to p(z|c) as c tends to a one-hot vector."""

    learn_weights: bool = True

    def init_mixture_prior(self, loc: torch.Tensor, raw_scale: torch.Tensor) -> None:
        """Register pi (zeros: uniform at the start), mu = ``loc`` and r = ``raw_scale``
        (``[K, L]`` each)."""
        k = loc.shape[0]
        if self.learn_weights:
            self.pi_logits = nn.Parameter(torch.zeros(k))
        else:
            self.register_buffer("pi_logits", torch.zeros(k))
        self.prior_loc = nn.Parameter(loc)
        self.raw_prior_scale = nn.Parameter(raw_scale)

    def log_weights(self) -> torch.Tensor:
        """log pi: ``[K]`` (uniform and fixed for DMVAE)."""
        return torch.log_softmax(self.pi_logits, -1)

    def prior_scale(self) -> torch.Tensor:
        """sigma_k: ``[K, L]``."""
        return self.min_scale + F.softplus(self.raw_prior_scale)

    def latent_given_cluster(self, c: torch.Tensor) -> dist.Distribution:
        """p(z|c) for an integer, enumerated or (relaxed) one-hot c; event shape ``[L]``."""
        loc = select(self.prior_loc, c, event_dim=1)
        return dist.Normal(loc, select(self.prior_scale(), c, event_dim=1)).to_event(1)

    def joint_latent_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(z | mu_k, sigma_k^2): ``[..., K]`` for ``z`` ``[..., L]``."""
        component = dist.Normal(self.prior_loc, self.prior_scale()).to_event(1)
        return self.log_weights() + component.log_prob(z.unsqueeze(-2))

    def cluster_given_latent(self, z: torch.Tensor) -> torch.Tensor:
        """log p(c|z): ``[..., K]`` (normalised)."""
        return torch.log_softmax(self.joint_latent_log_prob(z), -1)


@MODELS.register("vade")
class VaDE(MixturePrior, VAE):
    """VaDE: a mixture-of-Gaussians prior on a VAE's latent, q(c|x) = p(c|z) (Jiang et al.)."""

    pyro_name = "vade"
    default_guide = "vade"
    exact_guide = "vade"
    smoke_spec = {
        "data": "spirals",
        "data_options": {"n": 90},
        "model_options": {"num_components": 3, "latent_dim": 2, "hidden": "16"},
        "estimator": "enum",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        num_components: int = 10,
        latent_dim: int = 10,
        hidden: Sequence[int] | str = (64, 64),
        likelihood: str = "gaussian",
        activation: str = "relu",
        min_scale: float = 1e-3,
        pretrain_epochs: int = 0,
        pretrain_init: str = "umap",
    ) -> None:
        k = check_num_components(num_components)
        check_int("pretrain_epochs", pretrain_epochs, minimum=0)
        check_choice("pretrain_init", pretrain_init, PRIOR_INITS)
        super().__init__(
            input_dim,
            output_dim,
            task,
            latent_dim=latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            activation=activation,
            min_scale=min_scale,
        )
        self.num_components, self.pretrain_epochs = k, pretrain_epochs
        self.pretrain_init = pretrain_init
        self.init_mixture_prior(torch.randn(k, latent_dim), torch.zeros(k, latent_dim))

    def pretrain(self, x: torch.Tensor, seed: int) -> dict[str, Any] | None:
        """With ``pretrain_epochs > 0``, the paper's recipe (:func:`pretrain_and_init`) on the
        training inputs with the run's ``seed``, as the first step of a run (building the model
        trains nothing). Returns the autoencoder's per-epoch losses and the GMM start's mean
        log-likelihood on the embedding."""
        if self.pretrain_epochs == 0:
            return None
        done = pretrain_and_init(
            self, x, epochs=self.pretrain_epochs, seed=seed, noise=0.2, init=self.pretrain_init
        )
        return {
            "autoencoder_losses": [float(v) for v in done["pretrain_losses"]],
            "gmm_log_likelihood": self.embedding_log_likelihood(x),
        }

    # --- prior --------------------------------------------------------------------------------
    def prior_latent(self, n: int) -> torch.Tensor:
        logits = self.log_weights().expand(n, -1)
        c = pyro.sample("cluster", dist.Categorical(logits=logits))
        return pyro.sample("latent", self.latent_given_cluster(c))

    # --- inference of clusters ----------------------------------------------------------------
    def cluster_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The clustering read-out log q(c|x) = log p(c | z = mu(x)) (the encoder's mean, as the
        paper predicts at test time): ``[N, K]``."""
        return self.cluster_given_latent(self.encode(x)[0])

    def predict_cluster(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        with torch.no_grad():
            parts = [
                self.cluster_log_probs(x[i : i + batch_size]).argmax(-1)
                for i in range(0, len(x), batch_size)
            ]
        return torch.cat(parts)

    def init_cluster_net(self, x: torch.Tensor, seed: int = 0, **options: Any) -> list[float]:
        """Warm start of a separate q(c|x) network from the initial prior (DMVAE has one);
        VaDE's q(c|x) is p(c|z), so nothing to do: returns no losses."""
        return []

    @torch.no_grad()
    def cluster_samples(self, per_cluster: int = 8, seed: int = 0) -> torch.Tensor:
        """Decoder means f(z) for z ~ p(z|c = k), a generator seeded with ``seed``:
        ``[K, per_cluster, D]`` (sigmoid of the logits for the Bernoulli likelihood)."""
        g = torch.Generator().manual_seed(seed)
        loc, scale = self.prior_loc, self.prior_scale()
        eps = torch.randn((loc.shape[0], per_cluster, loc.shape[1]), generator=g).to(loc)
        out = self.decoder(loc[:, None] + scale[:, None] * eps)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Clustering accuracy, NMI and ARI against integer ``y`` when it is given."""
        from pyro_moe import metrics

        if y is None or y.is_floating_point():
            return {}
        return metrics.clustering_scores(y, self.predict_cluster(x))

    # --- initialisation of the prior ---------------------------------------------------------
    @torch.no_grad()
    def init_prior(
        self, x: torch.Tensor, seed: int = 0, n_init: int = 5, init: str = "gmm"
    ) -> dict[str, Any]:
        """Start the prior (pi, mu_k, sigma_k) from the embedding mu(x).

        ``init="gmm"`` (Jiang et al.): a diagonal GMM fitted by scikit-learn's EM, best of
        ``n_init`` restarts, copied as it is. ``init="gmm-full"``: a full-covariance GMM (EM,
        ``n_init`` restarts) whose responsibilities are moment-matched into a diagonal mixture
        (:func:`pyro_moe.manifold.moment_matched_mixture`), so the clusters come from the full
        fit and the prior keeps VaDE's diagonal form. ``init="umap"`` (N2D, McConville et al.):
        the responsibilities of a full GMM (best of ``n_init`` restarts) on the embedding's UMAP
        manifold (:func:`pyro_moe.manifold.manifold_clusters`), moment-matched the same way. Returns
        ``{"init", "labels", "resp"}``: the start's own cluster of every row (its GMM's argmax)
        and its responsibilities ``[N, K]``."""
        check_choice("init", init, PRIOR_INITS)
        z = self.embed(x)
        if init == "gmm":
            gmm = fit_em(z, self.num_components, "diag", seed=seed, n_init=n_init)
            weights, means, variances = gmm.weights_, gmm.means_, gmm.covariances_
            resp = gmm.predict_proba(z.cpu().numpy().astype(np.float64))
        else:
            if init == "gmm-full":
                gmm = fit_em(z, self.num_components, "full", seed=seed, n_init=n_init)
                resp = gmm.predict_proba(z.cpu().numpy().astype(np.float64))
            else:
                resp = manifold_clusters(z, self.num_components, seed=seed, n_init=n_init)
            weights, means, variances = moment_matched_mixture(z, resp)
        self.set_prior(weights, means, np.sqrt(variances))
        return {"init": init, "labels": resp.argmax(1), "resp": resp}

    @torch.no_grad()
    def set_prior(self, weights: Any, means: Any, scales: Any) -> None:
        """Copy a diagonal mixture into the prior: pi (when learned) from ``weights`` [K], mu_k
        from ``means`` [K, L], sigma_k from ``scales`` [K, L]; q(z|x) starts at a tenth of the
        mean scale (:meth:`narrow_posterior`)."""
        like = self.prior_loc
        if self.learn_weights:
            w = torch.as_tensor(np.asarray(weights), dtype=like.dtype)
            self.pi_logits.copy_(torch.log(w.clamp_min(1e-6)))
        self.prior_loc.copy_(torch.as_tensor(np.asarray(means), dtype=like.dtype))
        scale = torch.as_tensor(np.asarray(scales), dtype=like.dtype)
        self.raw_prior_scale.copy_(softplus_inverse((scale - self.min_scale).clamp_min(1e-4)))
        self.narrow_posterior(scale.mean(0) / 10)

    @torch.no_grad()
    def embedding_log_likelihood(self, x: torch.Tensor) -> float:
        """Mean log-likelihood of the embedding under the prior mixture,
        (1/N) sum_n log sum_k pi_k N(mu(x_n) | mu_k, sigma_k^2)."""
        z = self.embed(x)
        return float(torch.logsumexp(self.joint_latent_log_prob(z), -1).mean())

    @torch.no_grad()
    def narrow_posterior(self, scale: torch.Tensor) -> None:
        """Start q(z|x)'s standard deviation at ``scale`` (``[L]``) for every x: the autoencoder
        pretrains only the encoder's mean, and a log-variance head left at its random init gives
        sigma(x) ~ 1, far wider than the GMM's clusters; E_q(z|x) log p(z|c) then favours the
        widest cluster and a separate q(c|x) (DMVAE) collapses onto it."""
        last = self.encoder[-1]
        last.weight[self.latent_dim :].zero_()
        last.bias[self.latent_dim :].copy_(2 * torch.log(scale))


def pretrain_and_init(
    model: VaDE,
    x: torch.Tensor,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    n_init: int = 5,
    noise: float = 0.0,
    max_seconds: float | None = None,
    init: str = "umap",
) -> dict[str, Any]:
    """The recipe before the ELBO: autoencoder pretraining (denoising with input-dropout rate
    ``noise``), then the prior's start (:meth:`VaDE.init_prior`: ``init="gmm"``, the paper's EM
    with ``n_init`` restarts, or ``"umap"``, N2D's manifold clusters), and, for models with a
    q(c|x) network, its warm start from the prior; ``max_seconds`` cuts the pretraining
    (:meth:`~pyro_moe.models.vae.VAE.pretrain_autoencoder`); a q(c|x) network is fitted to the
    start's responsibilities. Returns ``{"pretrain_losses": [...]}`` joined with what
    :meth:`VaDE.init_prior` returns."""
    torch.manual_seed(seed)
    losses = model.pretrain_autoencoder(
        x,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        noise=noise,
        max_seconds=max_seconds,
    )
    start = model.init_prior(x, seed=seed, n_init=n_init, init=init)
    model.init_cluster_net(x, seed=seed, targets=start["resp"])
    return {"pretrain_losses": losses, **start}


def lr_step_decay(factor: float = 0.9, every: int = 10, floor: float = 2e-4):
    """A :func:`~pyro_moe.train.fit` callback for the VaDE paper's schedule: after every
    ``every`` epochs multiply each learning rate by ``factor`` (not below ``floor``); Jiang et
    al.'s MNIST code uses lr 0.002, factor 0.9 every 10 epochs, floor 0.0002. The rates live in
    Adam's state, so checkpoints keep them."""
    check_number("factor", factor)
    check_int("every", every)
    check_number("floor", floor, positive=False)

    def callback(trainer) -> dict[str, float]:
        groups = trainer.optimizer.param_groups
        if trainer.state.epoch % every == 0:
            for group in groups:
                group["lr"] = max(group["lr"] * factor, floor)
        return {"lr": groups[0]["lr"]}

    return callback
