"""Metrics against values worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_moe.errors import ConfigError, DataError
from pyro_moe.metrics import (
    accuracy,
    ari,
    clustering_accuracy,
    enumerated_log_likelihood,
    inference_seconds_per_10k,
    mse,
    nmi,
)


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


def test_clustering_accuracy_is_invariant_to_relabelling():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    permuted = np.array([2, 0, 3, 1])[truth]
    assert clustering_accuracy(truth, permuted) == 1.0
    assert nmi(truth, permuted) == pytest.approx(1.0)
    assert ari(truth, permuted) == pytest.approx(1.0)


def test_constant_labelling_scores_the_majority_fraction():
    truth = np.array([0] * 5 + [1] * 3 + [2] * 2)
    assert clustering_accuracy(truth, np.zeros(10, dtype=int)) == pytest.approx(0.5)
    assert clustering_accuracy(torch.tensor(truth), torch.full((10,), 7)) == pytest.approx(0.5)
    assert ari(truth, np.zeros(10, dtype=int)) == pytest.approx(0.0)


def test_clustering_accuracy_by_brute_force():
    rng = np.random.default_rng(1)
    truth, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    best = max(np.mean(np.array(m)[pred] == truth) for m in itertools.permutations(range(3)))
    assert clustering_accuracy(truth, pred) == pytest.approx(best)


def test_clustering_metrics_reject_bad_labels():
    with pytest.raises(DataError, match="integer"):
        clustering_accuracy(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(DataError, match="predicted has"):
        clustering_accuracy(np.array([0, 1]), np.array([0, 1, 1]))


def test_inference_time_is_scaled_to_10k_rows():
    seconds = inference_seconds_per_10k(lambda x: x.sum(-1), torch.zeros(500, 3), repeats=2)
    assert 0 <= seconds < 1.0
