"""``register_module`` skips ``pyro.module`` only where the skip changes nothing: the estimators'
trace recorder and plates on the stack, every parameter already in the store as it is."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyro_moe import base
from pyro_moe.base import params_unseen_by_handlers, register_module
from pyro_moe.estimators.traces import Record
from pyro_moe.registry import ESTIMATORS, GUIDES, MODELS


@pytest.fixture
def counted(monkeypatch):
    """The number of ``pyro.module`` calls that ran."""
    calls = []
    real = pyro.module
    monkeypatch.setattr(base.pyro, "module", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def test_the_first_call_registers_and_later_calls_under_the_recorder_skip(counted):
    pyro.clear_param_store()
    net = _net()
    with Record(), pyro.plate("data", 5, dim=-1):
        register_module("net", net)
        register_module("net", net)
    assert counted == ["net"]
    assert set(pyro.get_param_store().keys()) == {f"net$$${n}" for n, _ in net.named_parameters()}


def test_a_handler_that_reads_parameters_always_sees_them(counted):
    """``poutine.trace`` (what ``SVI`` uses to find parameters), ``block`` and ``lift`` get every
    parameter site, also when the store already holds them."""
    pyro.clear_param_store()
    net = _net()
    register_module("net", net)
    with poutine.trace(param_only=True) as capture:
        register_module("net", net)
    assert {s["value"] for s in capture.trace.nodes.values()} == set(net.parameters())
    for handler in (poutine.block(), poutine.lift(prior={})):
        with handler:
            assert not params_unseen_by_handlers()
    assert len(counted) == 2


def test_a_parameter_the_store_does_not_hold_as_it_is_is_registered(counted):
    pyro.clear_param_store()
    net = _net()
    register_module("net", net)
    net[0].weight = nn.Parameter(torch.zeros(4, 3))  # replaced after registration
    with Record():
        register_module("net", net)
    assert len(counted) == 2
    pyro.clear_param_store()
    with Record():
        register_module("net", net)
    assert len(counted) == 3 and "net$$$0.weight" in pyro.get_param_store()


def test_an_estimators_loss_and_gradient_are_those_of_pyro_module(monkeypatch, counted):
    """The small MoE's ``gumbel`` and ``reinforce`` steps with the skip equal, to the bit, the
    same steps with ``pyro.module`` always run (same seed); with the skip, the model and the
    guide run ``pyro.module`` on the first step only."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.randn(40, 1)
    model = MODELS["moe"](3, 1, num_components=4, gate="mlp", expert="linear", hidden_dim=8)
    guide = GUIDES["posterior"](model)
    params = [*model.parameters(), *guide.parameters()]
    store_holds = base._store_holds
    for name in ("gumbel", "reinforce"):
        estimator = ESTIMATORS[name]()
        results = []
        for skip in (True, False):
            monkeypatch.setattr(base, "_store_holds", store_holds if skip else lambda *a: 0)
            pyro.clear_param_store()
            counted.clear()
            for _ in range(2):  # the second call runs with the store filled
                torch.manual_seed(1)
                loss = estimator.loss(model.model, guide, x, y)
            grads = torch.autograd.grad(loss, params)
            results.append((loss.detach(), grads))
            assert len(counted) == (2 if skip else 4)
        (loss_a, grads_a), (loss_b, grads_b) = results
        assert torch.equal(loss_a, loss_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
