"""Gaussian-latent variational autoencoder (Kingma & Welling 2014; Singh et al., sec. 2.3).

Generative story, for each data point n::

    z_n ~ N(0, I_L)                                     site "latent"
    x_n | z_n ~ Bernoulli(sigmoid(f(z_n)))              site "obs"   (likelihood="bernoulli")
    x_n | z_n ~ N(f(z_n), diag(s^2))                    site "obs"   (likelihood="gaussian")

with the decoder f an MLP ``L - hidden[::-1] - D`` and s a learned per-pixel noise scale. The
guide ``vae`` is the amortized q(z|x) = N(mu(x), diag(sigma(x)^2)) of the encoder MLP
``D - hidden - 2L`` (held by the model, so that autoencoder pretraining and the mixture models'
guides share it). :meth:`VAE.pretrain_autoencoder` trains encoder mean and decoder as a plain
autoencoder (the pretraining step of VaDE, Jiang et al. 2017).

References:
    1. D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    2. Z. Jiang, Y. Zheng, H. Tan, B. Tang, H. Zhou, "Variational Deep Embedding: An
       Unsupervised and Generative Approach to Clustering", IJCAI 2017.
    3. G. Singh, A. Panda, A. Gajbhiye, "Mixture of Experts using Discrete VAE" (undated report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_moe.base import PyroModel, data_plate, register_module
from pyro_moe.errors import ConfigError
from pyro_moe.nn import mlp
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_int, check_number

LIKELIHOODS = ("gaussian", "bernoulli")


def parse_sizes(hidden: Sequence[int] | str | int, name: str = "hidden") -> tuple[int, ...]:
    """Layer widths from a list, an int or a string like ``"500-500-2000"``."""
    if isinstance(hidden, str):
        parts = [p for p in hidden.replace(",", "-").split("-") if p.strip()]
        try:
            hidden = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"{name} must be widths like '500-500-2000', got {hidden!r}"
            ) from None
    elif isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    sizes = tuple(hidden)
    if not sizes:
        raise ConfigError(f"{name} must be one or more integers >= 1, got {hidden!r}")
    for s in sizes:
        check_int(f"each width of {name}", s)
    return sizes


@MODELS.register("vae")
class VAE(PyroModel):
    """Gaussian-latent VAE with a Bernoulli or Gaussian decoder; no clusters."""

    pyro_name = "vae"
    default_guide = "vae"
    exact_guide = "vae"
    monitor = "valid_loss"
    tasks = ("clustering", "classification")
    smoke_spec = {
        "data": "spirals",
        "data_options": {"n": 90},
        "model_options": {"latent_dim": 2, "hidden": "16"},
        "estimator": "enum",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        latent_dim: int = 10,
        hidden: Sequence[int] | str = (64, 64),
        likelihood: str = "gaussian",
        activation: str = "relu",
        min_scale: float = 1e-3,
    ) -> None:
        sizes = parse_sizes(hidden)
        super().__init__()
        check_int("latent_dim", latent_dim)
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if min_scale <= 0:
            raise ConfigError(f"min_scale must be > 0, got {min_scale}")
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.likelihood, self.min_scale = likelihood, min_scale
        self.encoder = mlp([input_dim, *sizes, 2 * latent_dim], activation)
        self.decoder = mlp([latent_dim, *sizes[::-1], input_dim], activation)
        if likelihood == "gaussian":
            self.raw_obs_scale = nn.Parameter(torch.zeros(input_dim))

    # --- networks -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): mean and standard deviation, each ``[N, L]``."""
        loc, log_var = self.encoder(x).chunk(2, dim=-1)
        return loc, torch.exp(0.5 * log_var.clamp(-20.0, 10.0))

    def obs_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x|z) with event shape ``[D]``."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        scale = self.min_scale + F.softplus(self.raw_obs_scale)
        return dist.Normal(out, scale).to_event(1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the encoder's mean: ``[N, D]``."""
        with torch.no_grad():
            out = self.decoder(self.encode(x)[0])
            return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    # --- the Pyro program ---------------------------------------------------------------------
    def prior_latent(self, n: int) -> torch.Tensor:
        """Sample ``latent`` (and anything it depends on) inside the data plate."""
        zeros = torch.zeros(n, self.latent_dim, device=self.decoder[0].weight.device)
        return pyro.sample("latent", dist.Normal(zeros, 1.0).to_event(1))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        with data_plate(x, num_data):
            z = self.prior_latent(x.shape[0])
            return pyro.sample("obs", self.obs_dist(z), obs=x)

    # --- autoencoder pretraining --------------------------------------------------------------
    def reconstruction_loss(self, x: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
        """Mean per-row loss of the deterministic autoencoder x -> mu(x) -> f(mu(x)); with
        ``noise`` > 0 the encoder reads x with that fraction of its entries zeroed (a denoising
        autoencoder, Vincent et al. 2010, as DEC's and VaDE's pretraining) and the loss still
        compares with the clean x."""
        inputs = F.dropout(x, noise) * (1 - noise) if noise else x
        out = self.decoder(self.encode(inputs)[0])
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, x, reduction="sum") / len(x)
        return F.mse_loss(out, x, reduction="sum") / len(x)

    def pretrain_autoencoder(
        self,
        x: torch.Tensor,
        epochs: int = 10,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
        noise: float = 0.0,
        max_seconds: float | None = None,
        optimizer_state: dict | None = None,
        on_epoch: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
    ) -> list[float]:
        """Train encoder mean and decoder as an autoencoder (VaDE's pretraining) with Adam;
        ``noise``: the input-dropout rate of a denoising autoencoder (0: plain); ``max_seconds``:
        stop before an epoch that would end past this wall time (at the mean epoch time so far);
        ``optimizer_state``: Adam's state from an earlier call (a resumed pretraining);
        ``on_epoch(epoch, loss, optimizer)``: called after each epoch (checkpoints, probes).
        Returns the mean training loss of each epoch (fewer than ``epochs`` if cut)."""
        check_int("epochs", epochs)
        check_int("batch_size", batch_size)
        check_number("noise", noise, positive=False)
        check_number("max_seconds", max_seconds, optional=True)
        if not 0.0 <= noise < 1.0:
            raise ConfigError(f"noise must be in [0, 1), got {noise!r}")
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        optimizer = torch.optim.Adam(params, lr=lr)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        generator = torch.Generator().manual_seed(seed)
        batch_size = min(batch_size, len(x))
        losses, began = [], perf_counter()
        for epoch in range(epochs):
            elapsed = perf_counter() - began
            if max_seconds is not None and epoch and elapsed * (epoch + 1) / epoch > max_seconds:
                break
            order = torch.randperm(len(x), generator=generator)
            total, count = 0.0, 0
            for start in range(0, len(x) - batch_size + 1, batch_size):
                batch = x[order[start : start + batch_size]]
                optimizer.zero_grad(set_to_none=True)
                loss = self.reconstruction_loss(batch, noise)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item(), count + 1
            losses.append(total / max(count, 1))
            if on_epoch is not None:
                on_epoch(epoch, losses[-1], optimizer)
        return losses

    def embed(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Encoder means mu(x) without gradients: ``[N, L]``."""
        with torch.no_grad():
            return torch.cat(
                [self.encode(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
            )
