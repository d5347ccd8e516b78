"""VaDE-gated ME and DVMoE (models/vae_moe.py): exact objectives, relaxed limit, predictive."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.benchmarking import fixed_budget
from pyro_moe.errors import ConfigError
from pyro_moe.experiment import build_estimator
from pyro_moe.registry import GUIDES, MODELS
from tests.helpers import tiny_data

VAE_MOES = ["dvmoe", "vade-moe"]


def tiny(name: str, task: str = "regression", k: int = 3, **options):
    data = tiny_data(task, n=20, d=2)
    torch.manual_seed(0)
    model = MODELS[name].from_data(data, num_components=k, hidden_dim=6, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return data, model, GUIDES[MODELS[name].default_guide](model)


def hand_objective(model, x, y, z, x_weight=1.0):
    """log p(y|x) + x_weight * ELBO(x) at one z, written out term by term (Singh et al., sec. 7)."""
    loc, scale = model.encode(x)
    log_q_z = dist.Normal(loc, scale).log_prob(z).sum(-1)  # [N]
    dec_loc, dec_raw = model.decoder(z).chunk(2, -1)
    dec_scale = model.min_scale + torch.nn.functional.softplus(dec_raw)
    log_p_x = dist.Normal(dec_loc, dec_scale).log_prob(x).sum(-1)
    q_c = torch.softmax(model.gate(x), -1)  # [N, K]
    k = q_c.shape[-1]
    prior_scale = model.prior_scale()
    log_p_z_c = torch.stack(
        [dist.Normal(model.prior_loc[j], prior_scale[j]).log_prob(z).sum(-1) for j in range(k)], -1
    )
    cluster_terms = (q_c * (log_p_z_c - math.log(k) - q_c.log())).sum(-1)
    out = model.experts(x)  # [N, K, 1]
    expert_scale = model.min_scale + torch.nn.functional.softplus(model.raw_scale)
    log_p_y_c = dist.Normal(out[..., 0], expert_scale[:, 0]).log_prob(y)  # [N, K]
    log_p_y = torch.logsumexp(q_c.log() + log_p_y_c, -1)
    return (log_p_y + x_weight * (log_p_x - log_q_z + cluster_terms)).sum()


@pytest.mark.parametrize("x_weight", [1.0, 0.25])
def test_dvmoe_enum_objective_equals_hand_computation(float64, x_weight):
    data, model, guide = tiny("dvmoe", x_weight=x_weight)
    x, y = data.train.x, data.train.y
    estimator = build_estimator("enum", model)
    pyro.set_rng_seed(7)
    loss = estimator.loss(model.model, guide, x, y)
    pyro.set_rng_seed(7)  # the guide draws z first, with the same random numbers
    z = poutine.trace(guide).get_trace(x, y).nodes["latent"]["value"]
    expected = hand_objective(model, x, y, z, x_weight)
    assert -loss.item() == pytest.approx(expected.item(), abs=1e-4)


def test_dvmoe_log_p_y_term_is_the_exact_marginal(float64):
    data, model, _ = tiny("dvmoe")
    x, y = data.train.x, data.train.y
    direct = torch.stack(
        [
            torch.logsumexp(
                torch.stack(
                    [
                        torch.log_softmax(model.gate(x[n]), -1)[j]
                        + dist.Normal(model.experts(x[n : n + 1])[0, j], model.expert_scale()[j])
                        .log_prob(y[n])
                        .sum()
                        for j in range(3)
                    ]
                ),
                0,
            )
            for n in range(len(x))
        ]
    )
    assert torch.allclose(model.log_likelihood(x, y), direct, atol=1e-10)


def test_dvmoe_relaxed_objective_tends_to_enum_as_temperature_falls(float64):
    data, model, guide = tiny("dvmoe", k=2)
    with torch.no_grad():  # far-apart prior components, so relaxing c costs a lot at high tau
        model.prior_loc.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
    x, y = data.train.x[:3], data.train.y[:3]
    particles = 4000

    def objective(name: str, **options) -> float:
        estimator = build_estimator(name, model, num_particles=particles, **options)
        pyro.set_rng_seed(3)
        return -estimator.loss(model.model, guide, x, y).item()

    exact = objective("enum")
    gaps = [abs(objective("gumbel", temperature=t) - exact) for t in (1.0, 0.3, 0.05)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.1 * gaps[0]


@pytest.mark.parametrize("name", VAE_MOES)
def test_predictive_density_integrates_to_one_over_y(name):
    data, model, _ = tiny(name)
    grid = torch.linspace(-40, 40, 8001)
    with torch.no_grad():
        predictive = model.predictive(data.test.x[:4])
        log_p = predictive.log_prob(grid[:, None, None])  # [G, 4]
    mass = torch.trapezoid(log_p.exp(), grid, dim=0)
    assert torch.allclose(mass, torch.ones(4), atol=1e-3)


@pytest.mark.parametrize("name", VAE_MOES)
def test_class_probabilities_sum_to_one(name):
    data, model, _ = tiny(name, task="classification")
    with torch.no_grad():
        probs = model.predict(data.test.x)
        total = model.predictive(data.test.x).log_prob(torch.arange(3)[:, None]).exp().sum(0)
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-6)
    assert torch.allclose(total, torch.ones(len(probs)), atol=1e-6)


@pytest.mark.parametrize("name", VAE_MOES)
@pytest.mark.parametrize("estimator", ["enum", "reinforce"])
def test_models_train_with_registry_estimators(name, estimator):
    spec = RunSpec(
        model=name,
        data="shells",
        estimator=estimator,
        data_options={"n": 100, "clusters": 2},
        model_options={"num_components": 2, "hidden_dim": 8},
    )
    data, model, guide, est = build(spec)
    result = fit(model, guide, est, data, TrainConfig(epochs=2, batch_size=20, progress=False))
    assert math.isfinite(result.history[-1]["valid_nll"])


def test_vade_gate_is_a_monte_carlo_average_of_p_c_given_z():
    _, model, _ = tiny("vade-moe")
    x = torch.randn(5, 2)
    torch.manual_seed(1)
    log_gate = model.gate_log_probs(x)
    torch.manual_seed(1)
    loc, scale = model.encode(x)
    z = loc + scale * torch.randn((model.gate_samples,) + loc.shape)
    expected = model.cluster_given_latent(z).exp().mean(0)
    assert torch.allclose(log_gate.exp(), expected, atol=1e-6)


def test_bad_options_raise_clear_errors():
    data = tiny_data()
    with pytest.raises(ConfigError, match="label_gate"):
        MODELS["dvmoe"].from_data(data, label_gate="nope")
    with pytest.raises(ConfigError, match="no q\\(c\\|x\\) network"):
        MODELS["vade-moe"](2, 1, label_gate="encoder")
    with pytest.raises(ConfigError, match="latent_dim"):
        MODELS["dvmoe"].from_data(data, latent_dim=0)
    with pytest.raises(ConfigError, match="x_weight"):
        MODELS["dvmoe"].from_data(data, x_weight=0.0)
    with pytest.raises(ConfigError, match="no option"):
        MODELS["vade-moe"].from_data(data, label_gate="cluster")


def shells_test_mse(name: str, seed: int = 0, **options) -> float:
    """Test MSE after 300 Adam steps (lr 0.01, batch 40) on the 2-D ``shells`` set, 400 points."""
    spec = RunSpec(
        model=name,
        data="shells",
        estimator="enum",
        data_options={"dim": 2, "n": 400, "clusters": 3},
        model_options={"num_components": 3, "hidden_dim": 32, **options},
        seed=seed,
    )
    data, model, guide, est = build(spec)
    config = fixed_budget(epochs=50, batch_size=40, lr=0.01, seed=seed)
    fit(model, guide, est, data, config)
    return model.evaluate(data.test.x, data.test.y)["mse"]


def test_dvmoe_default_input_weight_beats_the_seeds_weight_on_shells():
    """DVMoE's default x_weight (0.3) against Singh et al.'s objective (x_weight 1), D = 2, seed 0:
    test MSE 0.47 vs 3.2 (measured; seed 1 gave 0.78 vs 3.0, and at 1,200 steps seeds 0-4 gave
    0.0095, 0.021, 2.2, 0.019, 0.88 vs 0.26, 0.21, 5.0, 0.33, 2.9). At weight 1 the input ELBO
    pulls q(c|x) towards a soft partition that nested shells do not have. The Deep MoE baseline
    reaches 0.45 on this budget and seed, so DVMoE does not beat it here (Table 1 in
    benchmarks/results/README.md)."""
    default = shells_test_mse("dvmoe")
    seeds_objective = shells_test_mse("dvmoe", x_weight=1.0)
    assert default < 0.25 * seeds_objective
