"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_moe.errors import ConfigError
from pyro_moe.metrics import accuracy, enumerated_log_likelihood, mse


def test_mse_and_accuracy():
    assert mse(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])) == pytest.approx(2.5)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(probs, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_enumerated_log_likelihood_of_a_two_component_mixture():
    y = torch.tensor([0.0, 2.0])

    def model():
        with pyro.plate("data", 2):
            c = pyro.sample("cluster", dist.Categorical(torch.tensor([0.3, 0.7])))
            pyro.sample("obs", dist.Normal(torch.tensor([0.0, 2.0])[c], 1.0), obs=y)

    def normal(v, m):
        return math.exp(-0.5 * (v - m) ** 2) / math.sqrt(2 * math.pi)

    expected = [math.log(0.3 * normal(v, 0) + 0.7 * normal(v, 2)) for v in (0.0, 2.0)]
    torch.testing.assert_close(enumerated_log_likelihood(model), torch.tensor(expected))


def test_continuous_latents_cannot_be_enumerated():
    def model():
        pyro.sample("latent", dist.Normal(0.0, 1.0))

    with pytest.raises(ConfigError, match="latent"):
        enumerated_log_likelihood(model)
