"""The mixture of experts against exact values computed by hand.

Tolerances: 1e-5 absolute on losses in float64 (the issue's tolerance; the sums are exact up to
rounding), and 4 standard errors per coordinate for Monte Carlo gradients.
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_moe.estimators import ESTIMATORS
from pyro_moe.metrics import enumerated_log_likelihood

from .helpers import tiny_data, tiny_moe

CASES = [
    ("regression", "linear", "linear"),
    ("regression", "mlp", "mlp"),
    ("classification", "linear", "linear"),
    ("classification", "mlp", "mlp"),
]


def brute_force_log_likelihood(model, x, y):
    """sum_n logsumexp_k [log p(k|x_n) + log p(y_n|x_n, k)], written directly in torch."""
    logits = model.gate(x)
    log_gate = logits - torch.logsumexp(logits, -1, keepdim=True)
    out = model.experts(x)  # [N, K, M]
    if model.task == "classification":
        log_probs = out - torch.logsumexp(out, -1, keepdim=True)
        log_lik = torch.stack([log_probs[n, :, y[n]] for n in range(len(y))])
    else:
        scale = model.expert_scale()
        z = (y[:, None, :] - out) / scale
        log_lik = (
            -0.5 * z**2 - torch.log(scale) - 0.5 * torch.log(torch.tensor(2 * torch.pi))
        ).sum(-1)
    return torch.logsumexp(log_gate + log_lik, -1).sum()


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("task,gate,expert", CASES, ids=["-".join(c) for c in CASES])
def test_enum_loss_is_minus_the_exact_log_likelihood(float64, k, task, gate, expert):
    data = tiny_data(task)
    model, guide = tiny_moe(data, "none", num_components=k, gate=gate, expert=expert)
    x, y = data.train.x, data.train.y
    loss = ESTIMATORS["enum"]().loss(model.model, guide, x, y)
    expected = -brute_force_log_likelihood(model, x, y)
    assert abs(loss.item() - expected.item()) < 1e-5
    assert abs(-model.log_likelihood(x, y).sum().item() - expected.item()) < 1e-5
    generic = enumerated_log_likelihood(model.model, x, y)
    assert generic.shape == (len(x),)
    assert abs(-generic.sum().item() - expected.item()) < 1e-5


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("task,gate,expert", CASES, ids=["-".join(c) for c in CASES])
def test_jensen_bound_is_below_the_log_likelihood(float64, k, task, gate, expert):
    data = tiny_data(task)
    model, gate_guide = tiny_moe(data, "gate", num_components=k, gate=gate, expert=expert)
    x, y = data.train.x, data.train.y
    enum = ESTIMATORS["enum"]()
    jensen = -enum.loss(model.model, gate_guide, x, y).item()
    exact = brute_force_log_likelihood(model, x, y).item()
    # the gate guide's ELBO is the Jensen bound sum_k p(k|x) log p(y|x,k), computed by hand too
    assert abs(jensen - model.jensen_bound(x, y).sum().item()) < 1e-5
    if k == 1:
        assert abs(jensen - exact) < 1e-5
    else:
        assert jensen < exact - 1e-3


@pytest.mark.parametrize("k", [1, 3])
def test_posterior_guide_elbo_is_below_the_log_likelihood(float64, k):
    data = tiny_data("regression")
    model, guide = tiny_moe(data, "posterior", num_components=k)
    x, y = data.train.x, data.train.y
    elbo = -ESTIMATORS["enum"]().loss(model.model, guide, x, y).item()
    exact = brute_force_log_likelihood(model, x, y).item()
    assert elbo <= exact + 1e-9
    if k == 1:
        assert abs(elbo - exact) < 1e-5


def _gate_gradient(model, loss) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.gate.parameters()))
    return torch.cat([g.flatten() for g in grads])


def _reinforce_batch_means(model, guide, x, y, batches: int, particles: int) -> torch.Tensor:
    """``batches`` means of ``particles`` REINFORCE estimates each (vectorised particles)."""
    estimator = ESTIMATORS["reinforce"](num_particles=particles)
    return torch.stack(
        [_gate_gradient(model, estimator.loss(model.model, guide, x, y)) for _ in range(batches)]
    )


def test_reinforce_gradient_of_the_jensen_bound_is_unbiased(float64):
    """Mean of 20,000 REINFORCE estimates (200 batches x 100 vectorised particles) of the gate's
    gradient vs the exact TraceEnum gradient of the same objective: within 4 standard errors per
    coordinate. The same check rejects the estimator with its score-function term left out."""
    data = tiny_data("regression", n=12, d=1)
    model, guide = tiny_moe(data, "gate", num_components=3)
    x, y = data.train.x[:6], data.train.y[:6]
    exact = _gate_gradient(model, ESTIMATORS["enum"]().loss(model.model, guide, x, y))
    pyro.set_rng_seed(1)
    means = _reinforce_batch_means(model, guide, x, y, batches=200, particles=100)
    estimate, se = means.mean(0), means.std(0) / means.shape[0] ** 0.5
    assert torch.all((estimate - exact).abs() < 4 * se), (estimate, exact, se)
    # the test can fail: dropping the score-function term leaves a biased (zero-mean) gradient
    assert torch.any((torch.zeros_like(exact) - exact).abs() > 4 * se)


@pytest.mark.parametrize("name", ["reinforce", "reinforce-avg"])
def test_sampling_estimators_report_the_elbo_value(float64, name):
    """The loss value of a sampling estimator is a single-sample -ELBO; its average over many
    draws is the exact -ELBO (4 standard errors)."""
    data = tiny_data("regression", n=12, d=1)
    model, guide = tiny_moe(data, "posterior", num_components=3)
    x, y = data.train.x, data.train.y
    exact = ESTIMATORS["enum"]().loss(model.model, guide, x, y).item()
    estimator = ESTIMATORS[name]()
    values = torch.tensor([estimator.loss(model.model, guide, x, y).item() for _ in range(400)])
    assert abs(values.mean().item() - exact) < 4 * values.std().item() / 20


def test_classification_predictions_are_distributions(float64):
    data = tiny_data("classification")
    model, _ = tiny_moe(data, "none", num_components=4)
    probs = model.predict(data.test.x)
    assert probs.shape == (len(data.test), 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(data.test)))
