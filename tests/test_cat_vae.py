"""The categorical VAE: shapes under particle plates, every estimator runs, MC validation."""

from __future__ import annotations

import math

import pytest
import torch

import pyro_moe.estimators  # noqa: F401
from pyro_moe.data import load_dataset
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.sampled import point_costs, run_traces
from pyro_moe.experiment import RunSpec, build, run_experiment
from pyro_moe.registry import ESTIMATORS, MODELS
from pyro_moe.train import TrainConfig
from pyro_moe.verification import cat_vae_state

SPEC = MODELS["cat-vae"].smoke_spec


def _build(estimator="st-gumbel"):
    spec = RunSpec(
        model="cat-vae",
        data=SPEC["data"],
        data_options=SPEC["data_options"],
        model_options=SPEC["model_options"],
        estimator=estimator,
    )
    return build(spec)


def test_monte_carlo_elbo_does_not_scale_with_particles():
    data, model, _, _ = _build()
    x = data.test.x
    values = []
    for particles in (1, 4, 16):
        model.validation_particles = particles
        torch.manual_seed(0)
        values.append(model.evaluate(x, None)["neg_elbo"])
    assert max(values) - min(values) < 0.05 * abs(values[0]), values


def test_point_costs_keep_particles_apart():
    """Each of S particles gets its own per-image cost (the obs site must not be summed over
    particles): f has shape [E, S, N] and differs across particles."""
    data, model, guide, _ = _build()
    x = data.train.x[:7]
    model_trace, guide_trace = run_traces(model.model, guide, (x,), {}, 2, 3, 2)
    costs = point_costs(model_trace, guide_trace, 2)
    assert costs.f.shape == (2, 3, 7) and costs.logq.shape == (2, 3, 7)
    assert model_trace.nodes["obs"]["log_prob"].shape == (2, 3, 1, 7)
    assert costs.f[0, 0].ne(costs.f[0, 1]).any()


@pytest.mark.parametrize("name", [n for n in ESTIMATORS.names() if n != "enum"])
def test_every_sampling_estimator_trains_the_cat_vae(name):
    data, model, guide, _ = _build(name)
    estimator = ESTIMATORS[name](max_plate_nesting=2)
    estimator.check(guide)
    loss = estimator.loss(model.model, guide, data.train.x[:16], None, num_data=100)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.decoder[0].weight.grad is not None
    if name not in ("concrete", "gumbel", "st-gumbel", "gumbel-rao"):
        assert model.encoder[0].weight.grad.abs().sum() > 0


def test_smoke_spec_trains_with_mc_validation():
    result = run_experiment(
        RunSpec(
            model="cat-vae",
            data=SPEC["data"],
            data_options=SPEC["data_options"],
            model_options=SPEC["model_options"],
            estimator=SPEC["estimator"],
        ),
        TrainConfig(epochs=2, progress=False),
        figures=False,
    )
    assert result.history[-1]["valid_loss"] > 0 and "test_neg_elbo" in result.summary


def test_bad_sizes():
    data = load_dataset(SPEC["data"], **SPEC["data_options"])
    with pytest.raises(ConfigError, match="hidden"):
        MODELS["cat-vae"].from_data(data, hidden="0")


def _exact_neg_elbo(model, x):
    """The discrete -ELBO per image by summing over all K^L joint codes (brute force)."""
    import itertools

    log_q = torch.log_softmax(model.cluster_logits(x), -1)  # [L, N, K]
    total = torch.zeros(x.shape[0])
    codes = itertools.product(range(model.num_components), repeat=model.num_latents)
    for code in codes:
        c = torch.tensor(code)[:, None].expand(-1, x.shape[0])  # [L, N]
        log_p = -torch.nn.functional.binary_cross_entropy_with_logits(
            model.decode(c).squeeze(-3), x, reduction="none"
        ).sum(-1)
        q = log_q.gather(-1, c[..., None]).squeeze(-1).sum(0).exp()  # [N]
        log_joint = log_p + model.num_latents * math.log(1 / model.num_components)
        total -= q * (log_joint - log_q.gather(-1, c[..., None]).squeeze(-1).sum(0))
    return total


def test_the_relaxed_objective_turns_into_the_exact_discrete_elbo_as_tau_falls():
    """At tau = 0.01 the Gumbel-softmax samples are one-hot to float precision, so the relaxed
    objective's 40,000-sample mean equals the brute-force discrete -ELBO (9 codes) within 4
    standard errors; at tau = 1 the decoder sees blurred codes and the two differ."""
    model, _, (x,) = cat_vae_state()
    with torch.no_grad():
        exact = _exact_neg_elbo(model, x)
        torch.manual_seed(0)
        cold = model.relaxed_neg_elbo(x, 0.01, 40_000)
        warm = model.relaxed_neg_elbo(x, 1.0, 40_000)
        # the per-sample spread bounds the Monte Carlo error of the 40,000-sample mean
        spread = torch.stack([model.relaxed_neg_elbo(x, 0.01, 1) for _ in range(200)])
    tolerance = 4 * spread.std(0) / math.sqrt(40_000) + 1e-6
    assert torch.all((cold - exact).abs() < tolerance), (cold, exact, tolerance)
    assert torch.any((warm - exact).abs() > 10 * tolerance), (warm, exact)
