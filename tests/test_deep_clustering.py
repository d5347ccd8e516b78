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


@pytest.mark.parametrize(
    "name, estimator, floor",
    [
        ("vade", "enum", 0.40),
        ("dmvae", "enum", 0.39),
        ("dmvae", "gumbel", 0.39),  # Singh et al.'s relaxed objective
        ("dmvae", "st-gumbel", 0.40),
    ],
)
def test_deep_models_train_on_spirals_to_their_floor(name, estimator, floor):
    # Measured (seed 0, this budget) on all 300 points: vade/enum 0.417, dmvae/enum 0.403,
    # dmvae/gumbel 0.400, dmvae/st-gumbel 0.487 (0.420 in a later fresh environment, every run).
    # A single cluster scores the majority fraction, 0.383 here, so the floors only say "better
    # than collapsed": a 0.99 target on 3-arm spirals is NOT reached by any recipe tried
    # (benchmarks/results/clustering_spirals.md).
    # The validation ELBO must also improve.
    from pyro_moe.models.vade import pretrain_and_init

    spec = RunSpec(
        model=name,
        data="spirals",
        estimator=estimator,
        data_options={"n": 300},
        model_options={"num_components": 3, "latent_dim": 2, "hidden": "32-32"},
    )
    data, model, guide, est = build(spec)
    pretrain_and_init(model, data.train.x, epochs=5, batch_size=60, lr=1e-2)
    config = TrainConfig(epochs=4, batch_size=60, lr=3e-3, patience=None, progress=False)
    history = fit(model, guide, est, data, config).history
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    x = torch.cat([data.train.x, data.valid.x, data.test.x])
    y = torch.cat([data.train.y, data.valid.y, data.test.y])
    assert torch.bincount(y).max().item() / len(y) == pytest.approx(0.383, abs=1e-3)
    assert model.evaluate(x, y)["accuracy"] >= floor


def test_pretraining_option_runs_the_recipe_as_the_first_step_of_a_run():
    from pyro_moe.data import load_dataset

    data = load_dataset("spirals", n=60)
    options = {"num_components": 3, "latent_dim": 2, "hidden": "8"}
    torch.manual_seed(0)
    plain = MODELS["dmvae"].from_data(data, **options)
    torch.manual_seed(0)
    built = MODELS["dmvae"].from_data(data, pretrain_epochs=2, **options)
    assert torch.equal(plain.prior_loc, built.prior_loc)  # building trains nothing
    record = built.pretrain(data.train.x, seed=0)
    assert not torch.equal(plain.prior_loc, built.prior_loc)
    assert built.prior_loc.shape == (3, 2) and len(record["autoencoder_losses"]) == 2
    assert plain.pretrain(data.train.x, seed=0) is None  # pretrain_epochs=0: nothing to do
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        MODELS["vade"].from_data(data, pretrain_epochs=-1)


def test_dmvae_reads_a_relaxed_one_hot_cluster_through_select():
    torch.manual_seed(0)
    model = MODELS["dmvae"](3, num_components=3, latent_dim=2, hidden="8")
    x = torch.randn(4, 3)
    w = torch.softmax(torch.randn(4, 3), -1)  # a relaxed one-hot c, as Gumbel-softmax gives
    trace = poutine.trace(poutine.do(model.model, {"cluster": w})).get_trace(x)
    latent = trace.nodes["latent"]["fn"].base_dist
    assert torch.allclose(latent.loc, w @ model.prior_loc)
    assert torch.allclose(latent.scale, w @ model.prior_scale())


def test_pretraining_options_noise_and_time_budget(monkeypatch):
    import itertools

    from pyro_moe.models import vae

    torch.manual_seed(0)
    model = MODELS["vade"](3, num_components=2, latent_dim=2, hidden="8")
    x = torch.randn(40, 3)
    assert len(model.pretrain_autoencoder(x, epochs=3, batch_size=10, noise=0.2)) == 3
    # a clock that reads 0, 1, 2, ... s per call (start 0, one call before each epoch): before
    # epoch 2 it reads 2 s after 1 epoch, so 2 epochs end at 4 s <= 4.2; before epoch 3 it reads
    # 3 s after 2 epochs, so 3 would end at 4.5 s > 4.2: two epochs run
    clock = itertools.count()
    monkeypatch.setattr(vae, "perf_counter", lambda: float(next(clock)))
    assert len(model.pretrain_autoencoder(x, epochs=5, batch_size=10, max_seconds=4.2)) == 2
    monkeypatch.undo()
    for bad in (1.0, -0.1, "0.2"):
        with pytest.raises(ConfigError, match="noise"):
            model.pretrain_autoencoder(x, epochs=1, noise=bad)


def test_lr_step_decay_follows_the_paper_schedule():
    from pyro_moe.models.vade import lr_step_decay

    spec = RunSpec(
        model="vade",
        data="spirals",
        data_options={"n": 60},
        model_options={"num_components": 3, "latent_dim": 2, "hidden": "8"},
    )
    data, model, guide, est = build(spec)
    config = TrainConfig(epochs=4, batch_size=36, lr=0.1, patience=None, progress=False)
    history = fit(model, guide, est, data, config, callbacks=[lr_step_decay(0.5, 2, 0.03)]).history
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.05, 0.05, 0.03])
    with pytest.raises(ConfigError, match="every"):
        lr_step_decay(0.9, 0)
