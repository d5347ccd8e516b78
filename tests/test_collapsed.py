"""The one-pass collapsed path of ``enum`` against ``TraceEnum_ELBO``: same value, same gradients.

Tolerance 1e-6 in float64 (both compute the same sums; differences are rounding).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_moe.estimators.collapsed import NotCollapsible, collapsed_loss
from pyro_moe.estimators.enum import Enumerate

from .helpers import tiny_data, tiny_moe

CASES = [
    ("regression", "linear", "linear"),
    ("regression", "mlp", "mlp"),
    ("classification", "mlp", "linear"),
]


def loss_and_grads(estimator, model, guide, x, y, num_data=None):
    model.zero_grad(set_to_none=True)
    loss = estimator.loss(model.model, guide, x, y, num_data=num_data)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("num_data", [None, 500])
@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("task,gate,expert", CASES, ids=["-".join(c) for c in CASES])
def test_fast_path_equals_trace_enum(float64, k, task, gate, expert, num_data):
    data = tiny_data(task, n=60)
    model, guide = tiny_moe(data, "none", num_components=k, gate=gate, expert=expert)
    x, y = data.train.x, data.train.y
    fast, general = Enumerate(fast=True), Enumerate(fast=False)
    value, grads = loss_and_grads(fast, model, guide, x, y, num_data)
    expected, expected_grads = loss_and_grads(general, model, guide, x, y, num_data)
    assert not fast._general, "the MoE should take the fast path"
    assert abs(value - expected) < 1e-6 * max(1.0, abs(expected))
    for name, g in expected_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-6, rtol=1e-6), name
    assert abs(fast.value(model.model, guide, x, y, num_data=num_data) - expected) < 1e-6 * max(
        1.0, abs(expected)
    )


def test_fast_path_is_taken_and_differs_from_a_wrong_answer(float64):
    """The test above could pass if both paths were TraceEnum: check the fast path by hand."""
    data = tiny_data("regression", n=30)
    model, guide = tiny_moe(data, "none", num_components=3)
    x, y = data.train.x, data.train.y
    direct = collapsed_loss(model.model, 1, x, y)
    assert abs(direct.item() + model.log_likelihood(x, y).sum().item()) < 1e-9


def two_latent_model(x, y=None, num_data=None):
    with pyro.plate("data", len(x), dim=-1):
        c = pyro.sample("cluster", dist.Categorical(logits=torch.zeros(len(x), 2)))
        z = pyro.sample("latent", dist.Normal(c.to(x.dtype), 1.0))
        return pyro.sample("label", dist.Normal(z, 1.0), obs=y)


def global_site_model(x, y=None, num_data=None):
    loc = pyro.param("loc", torch.tensor([-1.0, 1.0]))
    pyro.sample("prior_term", dist.Normal(0.0, 1.0), obs=loc.sum())  # no plate, no gate
    with pyro.plate("data", len(x), dim=-1):
        c = pyro.sample("cluster", dist.Categorical(logits=torch.zeros(len(x), 2)))
        return pyro.sample("label", dist.Normal(loc[c], 1.0), obs=y)


def test_other_latent_sites_are_not_collapsible():
    x, y = torch.randn(5, 1), torch.randn(5)
    with pytest.raises(NotCollapsible):
        collapsed_loss(two_latent_model, 1, x, y)


def test_sites_outside_the_plate_are_added_once(float64):
    x, y = torch.randn(8, 1), torch.randn(8)
    general = Enumerate(fast=False).loss(global_site_model, lambda *a, **k: None, x, y)
    assert abs(collapsed_loss(global_site_model, 1, x, y).item() - general.item()) < 1e-9


def test_fallback_is_remembered_per_model(float64):
    class Empty:
        is_empty = True

        def __call__(self, *args, **kwargs):
            return None

    estimator = Enumerate()
    x, y = torch.randn(6, 1), torch.randn(6)

    def model_with_guide_latent(x, y=None, num_data=None):
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("cluster", dist.Categorical(logits=torch.zeros(len(x), 2)))
            pyro.sample("other", dist.Bernoulli(0.5 * torch.ones(len(x))))
            loc = pyro.param("loc", torch.tensor(0.5))
            return pyro.sample("label", dist.Normal(loc, 1.0), obs=y)

    enumerated = pyro.infer.config_enumerate(model_with_guide_latent)
    value = estimator.loss(enumerated, Empty(), x, y)
    assert enumerated in estimator._general
    expected = Enumerate(fast=False).loss(enumerated, Empty(), x, y)
    assert abs(value.item() - expected.item()) < 1e-9
