"""GMM, VAE, VaDE and DMVAE against closed forms, scikit-learn and hand-computed ELBOs."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro_moe.models.gmm import GaussianMixture, fit_em

from pyro_moe.errors import ConfigError
from pyro_moe.experiment import RunSpec, build
from pyro_moe.metrics import enumerated_log_likelihood
from pyro_moe.registry import MODELS
from pyro_moe.train import TrainConfig, fit


def _random_gmm(covariance: str, k: int = 3, d: int = 2, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    model = GaussianMixture(d, num_components=k, covariance=covariance)
    a = torch.randn(k, d, d, generator=g)
    cov = a @ a.transpose(-1, -2) + 0.5 * torch.eye(d)
    if covariance == "diag":
        cov = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    weights = torch.softmax(torch.randn(k, generator=g), -1)
    model.set_parameters(weights, 2 * torch.randn(k, d, generator=g), cov)
    return model


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_enumerated_log_likelihood_equals_sklearn(float64, covariance):
    from sklearn.mixture import GaussianMixture as Sk
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    model = _random_gmm(covariance)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)) * 2
    sk = Sk(3, covariance_type=covariance)
    cov = model.covariances().detach().numpy()
    sk.weights_ = torch.softmax(model.pi_logits, -1).detach().numpy()
    sk.means_ = model.loc.detach().numpy()
    sk.covariances_ = cov if covariance == "full" else np.diagonal(cov, axis1=-2, axis2=-1)
    sk.precisions_cholesky_ = _compute_precision_cholesky(sk.covariances_, covariance)
    expected = sk.score_samples(x.numpy())
    pyro_ll = enumerated_log_likelihood(model.model, x)
    assert np.allclose(pyro_ll.numpy(), expected, atol=1e-4, rtol=0)
    assert np.allclose(model.log_likelihood(x).detach().numpy(), expected, atol=1e-4, rtol=0)


def test_gmm_rejects_bad_options():
    with pytest.raises(ConfigError, match="covariance"):
        GaussianMixture(2, covariance="spherical")
    with pytest.raises(ConfigError, match="covariance"):
        fit_em(np.zeros((5, 2)), 2, covariance="tied")


def test_vade_q_c_equals_p_c_given_z_by_hand(float64):
    torch.manual_seed(0)
    model = MODELS["vade"](3, num_components=4, latent_dim=2, hidden="8")
    guide = __import__("pyro_moe.registry", fromlist=["GUIDES"]).GUIDES["vade"](model)
    x = torch.randn(7, 3)
    trace = poutine.trace(guide).get_trace(x)
    z = trace.nodes["latent"]["value"]
    q = trace.nodes["cluster"]["fn"].probs
    pi = torch.softmax(model.pi_logits, -1)
    mu, sigma = model.prior_loc, model.prior_scale()
    by_hand = torch.stack(
        [
            pi[k]
            * torch.exp(
                -0.5 * (((z - mu[k]) / sigma[k]) ** 2).sum(-1)
                - torch.log(sigma[k]).sum()
                - np.log(2 * np.pi)
            )
            for k in range(4)
        ],
        -1,
    )
    by_hand = by_hand / by_hand.sum(-1, keepdim=True)
    assert torch.allclose(q, by_hand, atol=1e-10)


def test_dmvae_enum_elbo_equals_hand_computed_elbo(float64):
    from pyro_moe.registry import GUIDES

    torch.manual_seed(0)
    model = MODELS["dmvae"](3, num_components=3, latent_dim=2, hidden="8")
    guide = GUIDES["dmvae"](model)
    x = torch.randn(5, 3)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(3)
    loss = elbo.loss(config_enumerate(model.model), config_enumerate(guide), x)
    pyro.set_rng_seed(3)
    z = poutine.trace(guide).get_trace(x).nodes["latent"]["value"]
    loc, scale = model.encode(x)
    log_q_z = dist.Normal(loc, scale).log_prob(z).sum(-1)
    log_q_c = model.cluster_log_probs(x)  # [N, K]
    log_p_c = torch.full((3,), -np.log(3.0))
    log_p_z_c = dist.Normal(model.prior_loc, model.prior_scale()).log_prob(z[:, None]).sum(-1)
    log_p_x = model.obs_dist(z).log_prob(x)
    per_c = log_p_c + log_p_z_c - log_q_c  # [N, K]
    hand = (log_p_x - log_q_z + (log_q_c.exp() * per_c).sum(-1)).sum()
    assert loss == pytest.approx(-hand.item(), abs=1e-4)


def _train(name: str, estimator: str = "enum", epochs: int = 30, lr: float = 1e-2, **model_options):
    spec = RunSpec(
        model=name,
        data="spirals",
        estimator=estimator,
        data_options={"n": 300},
        model_options={"num_components": 3, **model_options},
    )
    data, model, guide, est = build(spec)
    config = TrainConfig(epochs=epochs, batch_size=60, lr=lr, patience=None, progress=False)
    fit(model, guide, est, data, config)
    return model.evaluate(data.test.x, data.test.y)["accuracy"]


def test_gmm_trains_on_spirals_to_its_floor():
    # a GMM cannot separate interleaved arms: measured 0.38 here (seed 0); EM gets about the same
    assert _train("gmm", epochs=8, lr=0.05) >= 0.34


@pytest.mark.parametrize("name", ["vae", "vade", "dmvae", "gmm"])
def test_smoke_spec_trains(name):
    cls = MODELS[name]
    spec = cls.smoke_spec
    run = RunSpec(
        model=name,
        data=spec["data"],
        estimator=spec["estimator"],
        data_options=spec["data_options"],
        model_options=spec["model_options"],
    )
    data, model, guide, est = build(run)
    result = fit(model, guide, est, data, TrainConfig(epochs=2, patience=None, progress=False))
    assert np.isfinite(result.history[-1]["valid_loss"])


def test_dmvae_trains_with_a_sampling_estimator():
    spec = RunSpec(
        model="dmvae",
        data="spirals",
        estimator="reinforce",
        data_options={"n": 90},
        model_options={"num_components": 3, "latent_dim": 2, "hidden": "16"},
    )
    data, model, guide, est = build(spec)
    result = fit(model, guide, est, data, TrainConfig(epochs=2, patience=None, progress=False))
    assert np.isfinite(result.history[-1]["valid_loss"])


def test_deep_models_reject_bad_options():
    with pytest.raises(ConfigError, match="hidden"):
        MODELS["vade"](2, hidden="a-b")
    with pytest.raises(ConfigError, match="likelihood"):
        MODELS["dmvae"](2, likelihood="poisson")
    with pytest.raises(ConfigError, match="latent_dim"):
        MODELS["vae"](2, latent_dim=0)
