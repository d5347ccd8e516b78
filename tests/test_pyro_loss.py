"""`pyro_moe.estimator(name)` as a drop-in Pyro loss: Pyro's own SVI trains a plain-function
Gaussian mixture (site `z`, plate `points`) to the exact maximum-likelihood means."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate

import pyro_moe
from pyro_moe import select
from pyro_moe.errors import UnknownNameError

SCALE = 0.5


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([-4.0, 0.0, 4.0])
    return centres.repeat_interleave(8) + SCALE * torch.randn(24, generator=g)


def model(x):
    locs = pyro.param("locs", torch.tensor([-3.0, 0.5, 3.0]))
    with pyro.plate("points", len(x)):
        z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(select(locs, z), SCALE), obs=x)


def guide(x):
    logits = pyro.param("assignment_logits", torch.zeros(len(x), 3))
    with pyro.plate("points", len(x)):
        pyro.sample("z", dist.Categorical(logits=logits))


def _exact_optimum(x: torch.Tensor) -> torch.Tensor:
    """argmax_mu sum_n log (1/3) sum_k N(x_n | mu_k, 0.5^2): the ELBO's optimum over the means
    when the free per-point guide can match the exact posterior."""
    mu = torch.tensor([-3.0, 0.5, 3.0], requires_grad=True)
    optim = torch.optim.LBFGS(
        [mu], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        optim.zero_grad()
        loss = -torch.logsumexp(dist.Normal(mu, SCALE).log_prob(x[:, None]), -1).sum()
        loss.backward()
        return loss

    optim.step(closure)
    return mu.detach()


@pytest.mark.parametrize(
    "name, options, steps, tolerance",
    [
        ("enum", {}, 400, 0.05),  # exact
        ("rloo", {"num_particles": 4}, 800, 0.05),  # score function
        ("gumbel", {"temperature": 0.5}, 800, 0.1),  # relaxed (biased): a looser tolerance
    ],
)
def test_svi_trains_a_plain_gmm_to_the_exact_optimum(float64, name, options, steps, tolerance):
    x = _data()
    optimum = _exact_optimum(x)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=pyro_moe.estimator(name, **options))
    for _ in range(steps):
        svi.step(x)
    error = (pyro.param("locs").detach() - optimum).abs().max().item()
    assert error < tolerance, (name, pyro.param("locs"), optimum)


def test_pyro_elbo_methods_agree_with_pyro_for_the_exact_estimator(float64):
    x = _data()
    loss = pyro_moe.estimator("enum")
    expected = TraceEnum_ELBO(max_plate_nesting=1).loss(
        config_enumerate(model), config_enumerate(guide), x
    )
    assert loss.loss(model, guide, x) == pytest.approx(expected, rel=1e-10)
    value = loss.differentiable_loss(model, guide, x)
    assert value.requires_grad and value.item() == pytest.approx(expected, rel=1e-10)
    assert loss.loss_and_grads(model, guide, x) == pytest.approx(expected, rel=1e-10)
    assert pyro.get_param_store().get_param("locs").unconstrained().grad is not None


def test_an_estimator_that_needs_a_library_guide_says_so():
    with pytest.raises(pyro_moe.PyroMoeError, match="nvil .* plain function"):
        pyro_moe.estimator("nvil").loss(model, guide, _data())


def test_sites_name_the_discrete_sites_and_unknown_names_fail():
    with pytest.raises(UnknownNameError, match="known:"):
        pyro_moe.estimator("no-such-estimator")
    loss = pyro_moe.estimator("rloo", sites=("nope",))
    with pytest.raises(pyro_moe.PyroMoeError, match="not sampled by the guide"):
        loss.loss(model, guide, _data())
